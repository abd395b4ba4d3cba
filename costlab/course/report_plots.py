"""The report's plots, drawn from headline.py's pairs and returned as base64 PNG strings.

Figures are built with matplotlib's object API (`Figure`, no pyplot), so writing a report from
inside a notebook never changes that notebook's plotting backend or open figures.
"""
from __future__ import annotations

import base64
import io
import math

from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from .. import metrics
from .scoreboard import CutResult, Group, Pair

SAVING, COSTS_MORE, BASE = "#2a7", "#c54", "#999"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _ratio_axis(ax, which: str, values: list[float]) -> None:
    """Log scale labelled "1.5x", "10x" rather than 1.5x10^0; denser ticks for a narrow range."""
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    span = max(values + [1.0]) / min(values + [1.0])
    subs = (1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 7.0) if span < 10 else (1.0, 2.0, 5.0) if span < 1e3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    axis.set_minor_formatter(NullFormatter())


def _short(name: str, width: int = 22) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def _finite(pairs: list[Pair]) -> list[Pair]:
    return [p for p in pairs if math.isfinite(p.ratio) and p.ratio > 0]


def _bars(ax, labels: list[str], values: list[float], colors: list[str]) -> None:
    ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(values)), labels, rotation=40, ha="right", fontsize=7)


def _quality_panel(ax, shown: list[Pair], quality: str) -> None:
    """The quality of each baseline and variant of the pairs drawn (baselines grey)."""
    values: dict[str, float] = {}
    for p in shown:
        delta = next((q for q in p.quality if q.metric == quality), None)
        if delta:
            values.setdefault(p.baseline, delta.before)
            values[p.variant] = delta.after
    bases = {p.baseline for p in shown}
    _bars(ax, [_short(n) for n in values], list(values.values()),
          [BASE if n in bases else "#47a" for n in values])
    better = "lower" if metrics.lower_is_better(quality) else "higher"
    ax.set_title(f"{metrics.spec(quality).label} ({better} is better)", fontsize=9)


def cut_plot(cut: CutResult) -> str | None:
    """Each variant's ratio on the cut's metric (log scale, x better than its baseline), and the
    quality of baseline and variants beside it. None when the cut has no pair to draw."""
    shown = _finite(cut.pairs)
    if not shown:
        return None
    quality = next((p.primary_quality.metric for p in shown if p.primary_quality), None)
    one_base = len({p.baseline for p in shown}) == 1
    width = min(3.0 + 0.45 * len(shown), 7.0)  # inches for the ratio panel: room for each label
    fig = Figure(figsize=(width * (2 if quality else 1), 3.3))
    axes = fig.subplots(1, 2 if quality else 1, squeeze=False)[0]
    labels = [_short(p.variant) for p in shown]  # the table and the ledger name each one's baseline
    ratios = [p.ratio for p in shown]
    _bars(axes[0], labels, ratios, [SAVING if r > 1 else COSTS_MORE for r in ratios])
    axes[0].axhline(1, color="k", lw=0.8)
    _ratio_axis(axes[0], "y", ratios)
    versus = f"than {_short(shown[0].baseline)}" if one_base else "than its own baseline"
    axes[0].set_title(f"{metrics.spec(cut.metric).label}: x better {versus}", fontsize=9)
    if quality:
        _quality_panel(axes[1], shown, quality)
    fig.suptitle(f"{cut.lesson.name}", fontsize=10)
    # Fixed margins: tight_layout measures every label and doubles the drawing time.
    fig.subplots_adjust(left=0.1 if quality else 0.18, right=0.98, top=0.82, bottom=0.38, wspace=0.25)
    return _png(fig)


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points no other point beats on both saving (x) and quality change (y)."""
    best, out = -math.inf, []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if y > best:
            out.append((x, y))
            best = y
    return sorted(out)


def pareto_plot(group: Group) -> str | None:
    """Every variant of every cut: saving on its cut's metric (x better, log) against the
    relative change of its main quality metric (% of the baseline's value, >0 is better)."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.subplots()
    points, xs = [], []
    for cut in group.cuts:
        for p in _finite(cut.pairs):
            xs.append(p.ratio)
            q = p.primary_quality
            rel = q.relative if q else None
            y = 100 * rel if rel is not None else 0.0
            headline = p is cut.headline
            ax.scatter([p.ratio], [y], s=55 if headline else 18, zorder=3,
                       facecolors=(SAVING if headline else BASE) if rel is not None else "none",
                       edgecolors=SAVING if headline else BASE)
            if headline:  # the lesson number only: the table above names the variant
                ax.annotate(cut.lesson.number, (p.ratio, y), fontsize=8, xytext=(4, 3), textcoords="offset points")
            if rel is not None:
                points.append((p.ratio, y))
    if not xs:
        return None
    front = _frontier(points)
    if len(front) > 1:
        ax.plot(*zip(*front), color=SAVING, lw=1, ls="--", label="Pareto frontier")
        ax.legend(fontsize=7, loc="lower left")
    _ratio_axis(ax, "x", xs)
    ax.axvline(1, color="k", lw=0.8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("cost saving on the cut's headline metric (x better than its baseline)")
    ax.set_ylabel("quality change (% of baseline, >0 better)")
    ax.set_title("Cost vs quality across cuts (green, numbered: each lesson's headline variant; grey: other "
                 "variants;\nhollow: quality not recorded, drawn at 0)", fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.86, bottom=0.14)
    return _png(fig)
