"""Curriculum learning: which examples a model sees when, from a difficulty score.

    scores = curriculum.loss_scores(scoring_model, train_set)        # or difficulty_scores(records)
    sched = curriculum.Schedule("easy_to_hard", pacing_steps=150, start=0.2)
    batches = curriculum.paced_batches(train_set, scores, batch_size=8, schedule=sched, seed=0)

Pacing is competence-based (Platanios et al. 2019): at step t the batch is drawn uniformly from
the easiest c(t) share of the examples, c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2)), growing
from c0 to 1 over T pacing steps. Random order is the same sampler with c(t) = 1 from the start,
and hard-to-easy draws from the hardest share instead: each variant is the baseline plus one
switch. Loss-based scores follow Wu, Dyer & Neyshabur 2021: a scoring model's loss on each
training example; mislabeled examples get a high loss (the model disagrees with their label),
so they land at the hard end and an easy-to-hard schedule postpones them.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .. import data, meter, probe
from ..evaluation import eval_mode
from ..train import TrainConfig, TrainResult, train

ORDERS = ("random", "easy_to_hard", "hard_to_easy")


@dataclass(frozen=True)
class Schedule:
    order: str  # random | easy_to_hard | hard_to_easy
    pacing_steps: int = 1  # T: steps until every example is in play
    start: float = 0.2  # c0: share of the examples in play at step 0

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if not 0 < self.start <= 1 or self.pacing_steps < 1:
            raise ValueError("start must be in (0, 1] and pacing_steps >= 1")


def competence(step: int, pacing_steps: int, start: float) -> float:
    """Share of the examples in play at `step` (Platanios et al.'s square-root pacing)."""
    return min(1.0, math.sqrt(step * (1 - start ** 2) / pacing_steps + start ** 2))


def paced_batches(encoded: dict[str, torch.Tensor], scores: torch.Tensor | None, batch_size: int, *,
                  schedule: Schedule, seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Endless batches drawn uniformly from the examples in play (lowest scores = easiest)."""
    n = data.num_examples(encoded)
    if schedule.order == "random":
        by_difficulty = torch.arange(n)  # every example in play from step 1: order is irrelevant
    else:
        if scores is None or len(scores) != n:
            raise ValueError(f"order {schedule.order!r} needs one score per example ({n})")
        # A stable sort makes ties (equal difficulty) resolve the same way on every machine.
        by_difficulty = torch.argsort(scores, stable=True, descending=schedule.order == "hard_to_easy")
    generator = torch.Generator().manual_seed(seed)
    step = 0
    while True:
        step += 1
        share = 1.0 if schedule.order == "random" else competence(step, schedule.pacing_steps, schedule.start)
        in_play = max(batch_size, math.ceil(share * n))
        chosen = by_difficulty[torch.randint(in_play, (batch_size,), generator=generator)]
        yield {k: v[chosen] for k, v in encoded.items()}


def difficulty_scores(records: list[dict]) -> torch.Tensor:
    """The review set's own score (negation, contrast, mixed aspects, length): 0 easy .. 1 hard."""
    return torch.tensor([float(r["difficulty"]) for r in records])


@torch.no_grad()
def loss_scores(model: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    """Each example's loss under a trained scoring model (its own label, however wrong)."""
    with eval_mode(model):
        out = []
        for batch in data.eval_batches(encoded, batch_size):
            labels = batch.pop("labels")
            logits = model(**batch).logits
            out.append(nn.functional.cross_entropy(logits, labels, reduction="none"))
    return torch.cat(out)


def cross_fitted_loss_scores(fit: Callable[[dict, int], nn.Module], encoded: dict[str, torch.Tensor], *,
                             folds: int = 2, seed: int = 0) -> torch.Tensor:
    """Each example's loss under a scoring model trained on the other folds, never on it.

    A model scores the examples it was trained on by how well it memorized them: a flipped
    label it has fitted looks easy. Scored out of fold, a mislabeled example is one the model
    confidently disagrees with, and it lands at the hard end (the idea of cross-validated
    noise detection, e.g. confident learning). fit(encoded_subset, seed) -> trained model.
    """
    n = data.num_examples(encoded)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    scores = torch.empty(n)
    for k in range(folds):
        held = order[k::folds]
        rest = order[torch.arange(n) % folds != k]
        model = fit({name: v[rest] for name, v in encoded.items()}, seed + k)
        scores[held] = loss_scores(model, {name: v[held] for name, v in encoded.items()})
    return scores


def train_paced(make_model: Callable[[int], nn.Module], train_set: dict[str, torch.Tensor],
                scores: torch.Tensor | None, schedule: Schedule, cfg: TrainConfig, *, batch_size: int,
                seed: int, evaluate=None) -> tuple[nn.Module, TrainResult]:
    """One run: a fresh model make_model(seed), batches paced by `schedule`, cfg with this seed.
    The same seed gives every order the same initial weights: seeds pair the variants."""
    model = make_model(seed)
    batches = paced_batches(train_set, scores, batch_size, schedule=schedule, seed=seed)
    with probe.one_thread():  # a small model's steps: see probe.one_thread
        return model, train(model, batches, dataclasses.replace(cfg, seed=seed), evaluate=evaluate)


def score_by_loss(make_model: Callable[[int], nn.Module], train_set: dict[str, torch.Tensor],
                  cfg: TrainConfig, *, batch_size: int, folds: int = 2, seed: int = 0) -> tuple[torch.Tensor, int]:
    """Cross-fitted loss scores from ordinary random-order runs (one per fold), and what they
    cost in FLOPs: the scoring models' training plus one forward pass over every example."""
    spent: list[int] = []
    models: list[nn.Module] = []

    def fit(subset: dict[str, torch.Tensor], fold_seed: int) -> nn.Module:
        model, result = train_paced(make_model, subset, None, Schedule("random"),
                                    dataclasses.replace(cfg, eval_every=None), batch_size=batch_size,
                                    seed=fold_seed)
        spent.append(result.total_flops)
        models.append(model)
        return model

    scores = cross_fitted_loss_scores(fit, train_set, folds=folds, seed=seed)
    # Each example is scored once, by one fold's model: one forward pass over the whole set.
    forward = meter.count_flops(lambda: loss_scores(models[0], train_set))
    return scores, sum(spent) + forward


def first_reaching(result, target: float) -> tuple[int | None, int | None]:
    """(step, cumulative training FLOPs) of the first evaluation at or above `target`."""
    for point in result.points:
        if point.metric is not None and point.metric >= target:
            return point.step, point.flops
    return None, None


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


def finite_or_none(value: float) -> float | None:
    """For the ledger, which stores numbers only: 'never reached' (infinite) is left out."""
    return None if math.isinf(value) else value
