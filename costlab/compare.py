"""Before/after tables and plots, direction from the metric vocabulary, quality beside cost.

A change that cost more quality than its stated bound is not called a saving, whatever the
cost metrics say.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import metrics


def _values(rec: dict) -> tuple[dict, dict]:
    """(cost metrics, quality) of a ledger record or of a plain {"metrics":..., "quality":...}."""
    return rec.get("metrics", {}), rec.get("quality", {}) or {}


def quality_change(metric: str, before: float, after: float) -> float:
    """How much better (>0) or worse (<0) quality got, in the metric's own units."""
    return (before - after) if metrics.lower_is_better(metric) else (after - before)


@dataclass(frozen=True)
class Comparison:
    rows: list[dict]
    quality_violations: tuple[str, ...]  # e.g. "accuracy fell by 0.050 (bound 0.020)"

    @property
    def quality_ok(self) -> bool:
        return not self.quality_violations

    def ratio(self, metric: str) -> float:
        return next(r["improvement"] for r in self.rows if r["metric"] == metric)

    def is_saving(self, metric: str) -> bool:
        """True only if the metric improved and no quality moved beyond its bound."""
        return self.quality_ok and self.ratio(metric) > 1

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("metric")


def compare(before: dict, after: dict, *, quality_bounds: dict[str, float] | None = None) -> Comparison:
    """Compare two records metric by metric.

    quality_bounds: the largest allowed loss per quality metric, e.g. {"accuracy": 0.02}.
    """
    bm, bq = _values(before)
    am, aq = _values(after)
    violations = []
    for name, bound in (quality_bounds or {}).items():
        if name not in bq or name not in aq:
            raise KeyError(f"quality {name!r} must be measured on both sides to bound it")
        change = quality_change(name, bq[name], aq[name])
        if change < -bound:
            violations.append(f"{name} got worse by {-change:.3f} (bound {bound:.3f})")
    rows = []
    for name in [*[m for m in bm if m in am], *[q for q in bq if q in aq]]:
        is_quality = name in metrics.QUALITY_METRICS
        improvement = metrics.improvement_ratio(name, bm.get(name, bq.get(name)), am.get(name, aq.get(name)))
        before_v, after_v = (bq[name], aq[name]) if is_quality else (bm[name], am[name])
        if is_quality:
            verdict = "quality: " + ("within bound" if name not in (quality_bounds or {})
                                     or not any(v.startswith(name) for v in violations) else "BEYOND BOUND")
        elif improvement > 1:
            verdict = "saving" if not violations else "not a saving: " + "; ".join(violations)
        elif improvement < 1:
            verdict = "costs more"
        else:
            verdict = "no change"
        rows.append({"metric": name, "unit": metrics.spec(name).unit, "before": before_v,
                     "after": after_v, "improvement": improvement,
                     "before_h": metrics.format_value(name, before_v),
                     "after_h": metrics.format_value(name, after_v), "verdict": verdict})
    return Comparison(rows, tuple(violations))


def table(records: list[dict], baseline: str, metric_names: list[str] | None = None):
    """One row per variant: each metric's value and its improvement over the baseline (x)."""
    import pandas as pd

    by_variant = {r["variant"]: r for r in records}
    if baseline not in by_variant:
        raise KeyError(f"baseline {baseline!r} not among the variants {list(by_variant)}")
    base_m, base_q = _values(by_variant[baseline])
    names = metric_names or [*base_m, *base_q]
    rows = []
    for variant, rec in by_variant.items():
        m, q = _values(rec)
        row = {"variant": variant}
        for name in names:
            value = m.get(name, q.get(name))
            ref = base_m.get(name, base_q.get(name))
            row[name] = metrics.format_value(name, value)
            if name in metrics.COST_METRICS and value is not None and ref is not None:
                row[f"{name} (x better)"] = round(metrics.improvement_ratio(name, ref, value), 2)
        if rec.get("estimated"):
            row["estimated"] = ", ".join(rec["estimated"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def plot(records: list[dict], baseline: str, metric_names: list[str], quality: str | None = None,
         title: str = ""):
    """Bars of each variant's improvement over the baseline (x better, log scale), quality beside."""
    import matplotlib.pyplot as plt

    by_variant = {r["variant"]: r for r in records}
    base_m, base_q = _values(by_variant[baseline])
    panels = len(metric_names) + (1 if quality else 0)
    fig, axes = plt.subplots(1, panels, figsize=(3.2 * panels, 3.2), squeeze=False)
    names = list(by_variant)
    for ax, name in zip(axes[0], metric_names):
        ratios = [metrics.improvement_ratio(name, base_m[name], by_variant[v]["metrics"][name])
                  if name in by_variant[v]["metrics"] else float("nan") for v in names]
        ax.bar(names, ratios, color=["#999" if v == baseline else "#2a7" for v in names])
        ax.axhline(1, color="k", lw=0.8)
        ax.set_yscale("log")
        ax.set_title(f"{metrics.spec(name).label}\n(x better than {baseline})", fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    if quality:
        ax = axes[0][-1]
        ax.bar(names, [by_variant[v].get("quality", {}).get(quality, float("nan")) for v in names], color="#47a")
        ax.set_title(metrics.spec(quality).label, fontsize=9)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
