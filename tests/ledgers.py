"""Synthetic ledgers for the report tests: real records from `ledger.make_record`, covering every
lesson of the manifest, so the report is tested without running a notebook."""
from __future__ import annotations

from costlab import course, ledger, metrics


def lesson_records(lesson: course.Lesson, *, scale: float | None = None, profile: str = "smoke",
                   device: dict | None = None, run_id: str = "run-a") -> list[dict]:
    """A baseline and two variants of one lesson on its headline metric: `cut` saves 4x*scale
    (direction from the vocabulary) and loses a little accuracy; `half` saves 2x and keeps it."""
    metric = lesson.headline_metric
    lower = metrics.lower_is_better(metric)
    base_value = 1000.0
    scale = scale if scale is not None else 0.6 + 0.3 * int(lesson.number)  # spread the Pareto plot

    def value(ratio: float) -> float:
        return base_value / ratio if lower else base_value * ratio

    out = []
    for variant, baseline, ratio, acc in (("baseline", None, 1.0, 0.80), ("half", "baseline", 2.0, 0.80),
                                          ("cut", "baseline", 4.0 * scale, 0.80 - 0.002 * int(lesson.number))):
        rec = ledger.make_record(lesson.name, variant, metrics_={metric: value(ratio), "wall_sec": 2.0 / ratio},
                                 quality={"accuracy": acc}, baseline=baseline, profile=profile,
                                 extra={"run_id": f"{run_id}-{lesson.number}"})
        if device is not None:
            rec["device"] = device
        out.append(rec)
    return out


def full_ledger(path, **kwargs) -> list[dict]:
    records = [rec for lesson in course.LESSONS for rec in lesson_records(lesson, **kwargs)]
    for rec in records:
        ledger.append(rec, path)
    return records
