"""Curriculum learning: the seeds' loop, the statistics and the plots around 07's curriculum.

The curriculum itself (the out-of-fold loss scores and the competence-based pacing sampler) is
written in the notebook; this module runs what the notebook builds and summarizes it:

    results = curriculum.over_seeds(make_head, lambda seed: paced_batches(train_set, scores, seed),
                                    cfg, seeds=p.seeds, evaluate=evaluate)
    summary = curriculum.RunSummary.of(results, target)     # steps/FLOPs to target over seeds
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .. import probe
from ..ledger import finite_or_none
from ..train import TrainConfig, TrainResult, train

Batches = Iterator[dict[str, torch.Tensor]]


def difficulty_scores(records: list[dict]) -> torch.Tensor:
    """The review set's own score (negation, contrast, mixed aspects, length): 0 easy .. 1 hard."""
    return torch.tensor([float(r["difficulty"]) for r in records])


def train_once(make_model: Callable[[int], nn.Module], batches: Batches, cfg: TrainConfig, *, seed: int,
               evaluate=None) -> tuple[nn.Module, TrainResult]:
    """One run: a fresh model make_model(seed) trained on `batches` with cfg at this seed.
    The same seed gives every order the same initial weights: seeds pair the variants."""
    model = make_model(seed)
    with probe.one_thread():  # a small model's steps: see probe.one_thread
        return model, train(model, batches, dataclasses.replace(cfg, seed=seed), evaluate=evaluate)


def over_seeds(make_model: Callable[[int], nn.Module], sampler: Callable[[int], Batches], cfg: TrainConfig, *,
               seeds, evaluate=None) -> list[TrainResult]:
    """train_once for every seed, on sampler(seed)'s batches: one result per seed."""
    return [train_once(make_model, sampler(seed), cfg, seed=seed, evaluate=evaluate)[1] for seed in seeds]


def first_reaching(result: TrainResult, target: float) -> tuple[int | None, int | None]:
    """(step, cumulative training FLOPs) of the first evaluation at or above `target`."""
    point = result.first_reaching(target)
    return (point.step, point.flops) if point else (None, None)


def share_at_hard_end(scores: torch.Tensor, marked: torch.Tensor, share: float = 0.2) -> float:
    """Fraction of the `marked` examples (e.g. flipped labels) among the hardest `share`."""
    k = max(1, round(share * len(scores)))
    hardest = torch.argsort(scores, descending=True, stable=True)[:k]
    return float(marked[hardest].float().sum() / marked.float().sum().clamp(min=1))


@dataclass(frozen=True)
class Spread:
    """Median and range over seeds; runs that never reached the target count as infinite."""
    median: float
    low: float
    high: float
    reached: int  # seeds that reached the target
    seeds: int

    def text(self, fmt: str = "{:.0f}") -> str:
        show = lambda v: "never" if math.isinf(v) else fmt.format(v)  # noqa: E731
        return f"{show(self.median)} [{show(self.low)}-{show(self.high)}]"


def spread(values: list[float | None]) -> Spread:
    finite = [math.inf if v is None else float(v) for v in values]
    return Spread(statistics.median(finite), min(finite), max(finite),
                  sum(v is not None for v in values), len(values))


@dataclass(frozen=True)
class RunSummary:
    """One variant over seeds: steps and training FLOPs to the target, final accuracy."""
    steps: Spread
    flops: Spread
    final: Spread
    seconds: float  # median training seconds of the whole budget

    @classmethod
    def of(cls, results: list[TrainResult], target: float) -> "RunSummary":
        reached = [first_reaching(r, target) for r in results]
        return cls(spread([step for step, _ in reached]), spread([flops for _, flops in reached]),
                   spread([r.final_metric for r in results]),
                   statistics.median(r.train_seconds for r in results))


def plot_scores(ax, values: torch.Tensor, marked: torch.Tensor, title: str) -> None:
    """Histogram of a difficulty score, the `marked` examples (flipped labels) apart."""
    bins = torch.linspace(float(values.min()), float(values.max()), 30).tolist()
    ax.hist(values[~marked].tolist(), bins=bins, alpha=0.6, label="label correct")
    ax.hist(values[marked].tolist(), bins=bins, alpha=0.6, label="label flipped")
    ax.set(title=title, xlabel="score (higher = harder)", ylabel="reviews")
    ax.legend(fontsize=8)


def plot_curves(ax, runs: dict[str, list[TrainResult]], target: float, *, bold=()) -> None:
    """Validation accuracy over steps: the median over seeds (line) and their range (band)."""
    for variant, results in runs.items():
        curves = torch.tensor([[pt.metric for pt in r.points if pt.metric is not None] for r in results])
        steps = [pt.step for pt in results[0].points if pt.metric is not None]
        ax.plot(steps, curves.median(0).values, label=variant, lw=2 if variant in bold else 1)
        ax.fill_between(steps, curves.min(0).values, curves.max(0).values, alpha=0.12)
    ax.axhline(target, color="k", ls=":", lw=1)
    ax.set(xlabel="optimizer step", ylabel="validation accuracy (clean labels)")


def summary_table(summaries: dict[tuple[str, str], RunSummary], scoring_flops: dict[str, int], target: float):
    """One row per (label set, order:score): steps and FLOPs to the target, final accuracy."""
    import pandas as pd

    rows = []
    for (name, variant), summary in summaries.items():
        rows.append({"labels": name, "order:score": variant,
                     f"steps to {target:.0%}, median [range]": summary.steps.text(),
                     "seeds reaching it": f"{summary.steps.reached}/{summary.steps.seeds}",
                     "training GFLOP to target": (finite_or_none(summary.flops.median) or math.nan) / 1e9,
                     "+ scoring GFLOP": (scoring_flops[name] if variant.endswith(":loss") else 0) / 1e9,
                     "final accuracy, median [range]": summary.final.text("{:.3f}")})
    return pd.DataFrame(rows).set_index(["labels", "order:score"]).style.format(
        "{:.3f}", subset=["training GFLOP to target", "+ scoring GFLOP"], na_rep="never")
