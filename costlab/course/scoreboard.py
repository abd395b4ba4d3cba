"""What each cut saved, read from ledger records only: the numbers behind report.html.

Records are grouped by hardware (device kind, name, count) and profile, because a ratio measured
on a 2-core CPU at the smoke profile says nothing about an H100 at the gpu profile. Within a
group, each lesson's headline comes from its latest run (records sharing `extra.run_id`): the
variant with the best ratio on the lesson's headline metric against its own baseline, with the
quality change of that same pair beside it. A notebook can steer the choice through a record's
`extra["headline"]`: True marks the variants the lesson is about (only they compete), False
excludes one (a failure drill, say, whose shorter run is no saving). Other runs of the same lesson on the same hardware
(a workshop's learners) only widen the range shown next to it; they are never mixed into a pair.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import course, metrics


@dataclass(frozen=True)
class QualityDelta:
    metric: str
    before: float
    after: float

    @property
    def change(self) -> float:
        """Better (>0) or worse (<0), in the metric's own units (direction from the vocabulary)."""
        return (self.before - self.after) if metrics.lower_is_better(self.metric) else (self.after - self.before)

    @property
    def relative(self) -> float | None:
        """The change as a fraction of the baseline's value (unit-free, for the cross-cut plot)."""
        return None if self.before == 0 else self.change / abs(self.before)


@dataclass(frozen=True)
class Pair:
    """One variant against the baseline it names, on one cost metric."""
    variant: str
    baseline: str
    metric: str
    before: float
    after: float
    estimated: bool  # the metric is an estimate on either side
    quality: tuple[QualityDelta, ...]
    preferred: bool | None = None  # the variant record's extra["headline"], if it set one
    # The baseline never reached the target: `before` is what it spent without getting there, so
    # the true ratio is at least `ratio` (shown with a "≥").
    lower_bound: bool = False

    @property
    def ratio_text(self) -> str:
        return ("≥ " if self.lower_bound else "") + format_ratio(self.ratio)

    @property
    def ratio(self) -> float:
        return metrics.improvement_ratio(self.metric, self.before, self.after)

    @property
    def primary_quality(self) -> QualityDelta | None:
        return self.quality[0] if self.quality else None

    @property
    def quality_worse(self) -> list[QualityDelta]:
        """Quality measures that got worse by more than QUALITY_NOISE of the baseline's value."""
        return [q for q in self.quality if q.change < 0 and (q.relative is None or q.relative < -QUALITY_NOISE)]


# Relative quality changes below 1% of the baseline's value are not flagged as losses: a few-step
# smoke run moves eval loss by that much from run to run. The numbers are shown either way.
QUALITY_NOISE = 0.01


@dataclass
class CutResult:
    lesson: course.Lesson
    metric: str | None  # the cost metric shown (the lesson's headline metric unless noted)
    headline: Pair | None = None  # best variant of the latest run
    pairs: list[Pair] = field(default_factory=list)  # every variant of that run on `metric`
    records: list[dict] = field(default_factory=list)  # the latest run's records
    run_count: int = 0
    ratio_range: tuple[float, float] | None = None  # headline ratio over all runs (k > 1)
    note: str = ""

    @property
    def status(self) -> str:
        if not self.records:
            return "not run"
        return "measured" if self.headline else "no pair"


@dataclass
class Group:
    device: dict
    profile: str
    records: list[dict]
    cuts: list[CutResult]

    @property
    def label(self) -> str:
        return hardware_label(self.device)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _known(name: str) -> bool:
    try:
        metrics.spec(name)
        return True
    except KeyError:
        return False


def hardware_key(rec: dict) -> tuple[str, str, int]:
    d = rec.get("device") if isinstance(rec.get("device"), dict) else {}
    count = d.get("count") if isinstance(d.get("count"), int) else 0
    return str(d.get("kind", "unknown")), str(d.get("name", "unknown")), count


def hardware_label(device: dict) -> str:
    kind, name, count = hardware_key({"device": device})
    unit = ("core" if kind == "cpu" else "GPU") + ("s" if count != 1 else "")
    return f"{kind}: {name}" + (f" ({count} {unit})" if count else "")


def run_id(rec: dict) -> str:
    """Records of one notebook execution share a run id (Session); older lines fall back to
    their commit, so they still form one run per checkout."""
    extra = rec.get("extra") if isinstance(rec.get("extra"), dict) else {}
    prov = rec.get("provenance") if isinstance(rec.get("provenance"), dict) else {}
    return str(extra.get("run_id") or f"commit:{prov.get('git_commit')}")


def _created(rec: dict) -> str:
    prov = rec.get("provenance") if isinstance(rec.get("provenance"), dict) else {}
    return str(prov.get("created_at") or "")


def _runs(records: list[dict]) -> list[list[dict]]:
    """Records split by run, oldest run first (by the newest line of each run, file order kept)."""
    by_run: dict[str, list[dict]] = {}
    for rec in records:
        by_run.setdefault(run_id(rec), []).append(rec)
    return sorted(by_run.values(), key=lambda run: max(_created(r) for r in run))


def _quality(before: dict, after: dict) -> tuple[QualityDelta, ...]:
    bq, aq = before.get("quality") or {}, after.get("quality") or {}
    names = [q for q in metrics.QUALITY_METRICS if _number(bq.get(q)) and _number(aq.get(q))]
    return tuple(QualityDelta(q, float(bq[q]), float(aq[q])) for q in names)


TO_TARGET = "_to_target"


def pairs(run: list[dict], metric: str) -> list[Pair]:
    """Every variant of one run that names a recorded baseline and has `metric` on both sides; for
    an `*_to_target` metric the baseline never reached, what it spent in all (`flops`, `steps`,
    ...) stands in, and the pair is a lower bound."""
    latest = {rec["variant"]: rec for rec in run}  # later lines win, as in ledger.latest
    out = []
    for variant, rec in latest.items():
        base = latest.get(rec.get("baseline")) if rec.get("baseline") != variant else None
        if base is None:
            continue
        base_m, rec_m = base.get("metrics") or {}, rec.get("metrics") or {}
        before, after = base_m.get(metric), rec_m.get(metric)
        spent = metric.removesuffix(TO_TARGET)
        lower_bound = (metric.endswith(TO_TARGET) and not _number(before) and _number(after)
                       and _number(base_m.get(spent)))
        if lower_bound:  # e.g. flops_to_target: the baseline spent `flops` and missed the target
            before = base_m[spent]
        if not (_number(before) and _number(after)):
            continue
        estimated = metric in (rec.get("estimated") or []) or metric in (base.get("estimated") or [])
        extra = rec.get("extra") if isinstance(rec.get("extra"), dict) else {}
        marked = extra.get("headline") if isinstance(extra.get("headline"), bool) else None
        out.append(Pair(variant, rec["baseline"], metric, float(before), float(after), estimated,
                        _quality(base, rec), marked, lower_bound))
    return out


def _best(found: list[Pair]) -> Pair | None:
    """The best ratio among the variants marked for the headline, else among those not excluded."""
    pool = [p for p in found if p.preferred] or [p for p in found if p.preferred is not False]
    return max(pool, key=lambda p: p.ratio) if pool else None


def _fallback_metric(run: list[dict]) -> str | None:
    """The first vocabulary cost metric that some variant-baseline pair of the run shares."""
    for name in metrics.COST_METRICS:
        if pairs(run, name):
            return name
    return None


def cut_result(lesson: course.Lesson, records: list[dict]) -> CutResult:
    mine = [r for r in records if r["notebook"] == lesson.name]
    runs = _runs(mine)
    if not runs:
        return CutResult(lesson, lesson.headline_metric)
    metric, note = lesson.headline_metric, ""
    # The newest run that measured a pair; a run stopped after its baseline does not hide it.
    latest = next((run for run in reversed(runs) if metric and pairs(run, metric)), None)
    if latest is not None and latest is not runs[-1]:
        note = "the newest run recorded no variant-baseline pair; showing the newest one that did"
    if latest is None:
        latest = runs[-1]
        fallback = _fallback_metric(latest)
        if fallback:
            note = f"headline metric {metric} not recorded; showing {fallback}"
            metric = fallback
        else:
            note = "no variant with a recorded baseline and a shared cost metric"
    found = pairs(latest, metric) if metric else []
    result = CutResult(lesson, metric, _best(found), found, latest, len(runs), note=note)
    if len(runs) > 1 and metric:
        ratios = [p.ratio for p in (_best(pairs(run, metric)) for run in runs) if p]
        if len(ratios) > 1:
            result.ratio_range = (min(ratios), max(ratios))
    return result


def same_pair_on(cut: CutResult, metric: str) -> Pair | None:
    """The headline's variant and baseline compared on another metric (for a published figure
    about that metric), or None where either side did not record it."""
    if cut.headline is None:
        return None
    return next((p for p in pairs(cut.records, metric) if p.variant == cut.headline.variant
                 and p.baseline == cut.headline.baseline), None)


def _valid(rec: dict) -> bool:
    """Ledger-valid records can still carry names from another version of the vocabulary; those
    names are dropped from the view (the record itself stays in the ledger untouched)."""
    return isinstance(rec.get("notebook"), str) and isinstance(rec.get("variant"), str)


def _view(rec: dict) -> dict:
    keep = dict(rec)
    keep["metrics"] = {k: v for k, v in (rec.get("metrics") or {}).items() if _known(k) and _number(v)}
    quality = rec.get("quality") if isinstance(rec.get("quality"), dict) else {}
    keep["quality"] = {k: v for k, v in quality.items() if _known(k) and _number(v)}
    return keep


def groups(records: list[dict]) -> list[Group]:
    """One group per (hardware, profile), each with one CutResult per lesson of the manifest."""
    lesson_names = {l.name for l in course.LESSONS}
    by_key: dict[tuple, list[dict]] = {}
    devices: dict[tuple, dict] = {}
    for rec in records:
        if not _valid(rec) or rec["notebook"] not in lesson_names:
            continue
        key = (*hardware_key(rec), str(rec.get("profile")))
        by_key.setdefault(key, []).append(_view(rec))
        devices.setdefault(key, rec.get("device") if isinstance(rec.get("device"), dict) else {})
    out = []
    for key in sorted(by_key):
        recs = by_key[key]
        out.append(Group(devices[key], key[3], recs, [cut_result(l, recs) for l in course.LESSONS]))
    return out


def outside_manifest(records: list[dict]) -> int:
    """Records whose notebook is not a lesson of this manifest (another kit version, a typo)."""
    names = {l.name for l in course.LESSONS}
    return sum(1 for r in records if not _valid(r) or r["notebook"] not in names)


def format_ratio(ratio: float | None) -> str:
    if ratio is None:
        return "—"
    if math.isinf(ratio):
        return "∞x"
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    return f"{ratio:.1f}x" if ratio >= 10 else f"{ratio:.2f}x"
