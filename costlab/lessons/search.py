"""Hyperparameter search that stops bad trials early, with Optuna, and what each search spends.

    book = search.CurveBook(train_config)                      # config -> learning curve, once
    study = optuna.create_study(storage=search.storage_url(), study_name=..., load_if_exists=True,
                                direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=33))
    study.optimize(search.objective(book, SPACE, rungs=[33, 100, 300]), n_trials=36)
    ledger = search.spent(study)                                # FLOPs per trial, best so far

Every configuration is trained once, to the full budget, and its validation curve is kept in the
CurveBook. Training is deterministic (fixed seed), so a search that trains a configuration gets
exactly that curve; a trial stopped at step s is charged the FLOPs of s steps and of the
evaluations it needed to be judged, as if it had trained live (a notebook checks the replay
against a live run). The exhaustive grid fills the book; every other search reads from it.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable

import optuna

from .. import ledger


@dataclass(frozen=True)
class Curve:
    steps: tuple[int, ...]  # steps where the validation metric was measured
    values: tuple[float, ...]  # the metric there (higher is better)
    flops_per_step: int  # training FLOPs of one optimizer step
    eval_flops: int  # FLOPs of one evaluation

    def value_at(self, step: int) -> float:
        return self.values[self.steps.index(step)]

    def cost(self, step: int, evaluations: int) -> int:
        """FLOPs of training to `step` and running `evaluations` evaluations."""
        return step * self.flops_per_step + evaluations * self.eval_flops


def config_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


@dataclass
class CurveBook:
    """Learning curves by configuration; `train(params) -> Curve` runs on a miss."""
    train: Callable[[dict], Curve]
    curves: dict[tuple, Curve] = field(default_factory=dict)
    trained_flops: int = 0  # what filling the book really cost
    misses: int = 0

    def get(self, params: dict) -> Curve:
        key = config_key(params)
        if key not in self.curves:
            curve = self.train(dict(params))
            self.curves[key] = curve
            self.trained_flops += curve.cost(curve.steps[-1], len(curve.steps))
            self.misses += 1
        return self.curves[key]


def head_curve(train_set: dict, val_batches: list[dict], params: dict, *, steps: int, batch_size: int,
               eval_every: int, seed: int = 0) -> Curve:
    """Train costlab.probe's head with `params` (lr, hidden, dropout) and return its validation
    accuracy curve: the cheap objective of lesson 09. Deterministic for a given seed."""
    from .. import data, evaluation, probe
    from ..train import TrainConfig, train

    head = probe.build_head(train_set, hidden=params["hidden"], dropout=params["dropout"], seed=seed)
    cfg = TrainConfig(steps=steps, lr=params["lr"], eval_every=eval_every, seed=seed, progress=False)
    with probe.one_thread():
        result = train(head, data.batches(train_set, batch_size, seed=seed), cfg,
                       evaluate=lambda m: evaluation.accuracy(m, val_batches))
        eval_flops = probe.eval_flops(head, val_batches)
    points = [pt for pt in result.points if pt.metric is not None]
    return Curve(tuple(pt.step for pt in points), tuple(pt.metric for pt in points), result.flops_per_step, eval_flops)


def grid(space: dict[str, list]) -> list[dict]:
    """Every configuration of the space, in the order a nested loop would visit them."""
    names = list(space)
    return [dict(zip(names, values)) for values in itertools.product(*space.values())]


def objective(book: CurveBook, space: dict[str, list], *, rungs: list[int] | None,
              calls: list[int] | None = None, stop_in_trial: int | None = None) -> Callable[[optuna.Trial], float]:
    """An Optuna objective over a discrete space.

    rungs: the steps at which a trial reports its validation metric and may be pruned (each
    report is an evaluation, charged); None: full budget, judged once at the end.
    calls: if given, each call appends its trial number (to show what a resumed study re-runs).
    stop_in_trial: raise KeyboardInterrupt in this trial after its first report, as if the
    kernel were stopped mid-trial (Optuna records the trial as FAIL and re-raises).
    """
    def run(trial: optuna.Trial) -> float:
        if calls is not None:
            calls.append(trial.number)
        params = {name: trial.suggest_categorical(name, values) for name, values in space.items()}
        curve = book.get(params)
        checkpoints = rungs or [curve.steps[-1]]
        for i, step in enumerate(checkpoints, start=1):
            value = curve.value_at(step)
            # What the trial has spent so far: training to this step and its i evaluations.
            trial.set_user_attr("flops", curve.cost(step, i))
            trial.set_user_attr("steps", step)
            if rungs is not None:
                trial.report(value, step)
                if trial.number == stop_in_trial:
                    raise KeyboardInterrupt(f"stopped in trial {trial.number}, at step {step}")
                if trial.should_prune():
                    raise optuna.TrialPruned()
        return value
    return run


@dataclass(frozen=True)
class Spent:
    """A search's trials in the order they ran, with cumulative compute and best so far."""
    flops: tuple[int, ...]  # cumulative FLOPs after each trial
    steps: tuple[int, ...]  # cumulative optimizer steps after each trial
    best: tuple[float, ...]  # best completed value so far (nan before the first completes)
    states: tuple[str, ...]

    def to_reach(self, threshold: float) -> tuple[int | None, int | None]:
        """(FLOPs, steps) spent when a completed trial first reached `threshold`."""
        for flops, steps, best in zip(self.flops, self.steps, self.best):
            if not math.isnan(best) and best >= threshold:
                return flops, steps
        return None, None


def spent(trials: list[optuna.trial.FrozenTrial]) -> Spent:
    """Cumulative compute and best-so-far of a study's trials, by number. Failed trials (an
    interrupted one) count for the compute they spent before they stopped."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    done = sorted((t for t in trials if t.state in states and "flops" in t.user_attrs), key=lambda t: t.number)
    flops = steps = 0
    best = math.nan
    out = ([], [], [], [])
    for t in done:
        flops += t.user_attrs["flops"]
        steps += t.user_attrs["steps"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            best = t.value if math.isnan(best) else max(best, t.value)
        for column, value in zip(out, (flops, steps, best, t.state.name)):
            column.append(value)
    return Spent(*map(tuple, out))


def random_search_expected(values: list[float], costs: list[float], threshold: float) -> float:
    """Expected compute of random search at full budget (configurations drawn without
    replacement, each at its full cost) until one reaches `threshold`. Exact, from the
    exhaustive grid's results: each of the N - k configurations that miss comes before the first
    of the k that reach it with probability 1 / (k + 1), and the first hit is any of the k."""
    hits = [c for v, c in zip(values, costs) if v >= threshold]
    misses = [c for v, c in zip(values, costs) if v < threshold]
    if not hits:
        raise ValueError("no configuration reaches the threshold")
    return sum(misses) / (len(hits) + 1) + sum(hits) / len(hits)


def storage_url(name: str = "09_hyperparameter_search.db") -> str:
    """A SQLite file under COSTLAB_RESULTS: studies survive the process and can be resumed."""
    return f"sqlite:///{ledger.results_dir() / name}"


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)
