"""What lesson 09's searches spend, the features its head trains on, and where its studies live.

The notebook writes the objective and the `optuna.create_study(..., pruner=...)` lines; costlab
keeps the accounting that every search shares:

    x_train, y_train, x_val, y_val = search.pooled(feats)     # one vector per review
    spent = search.spent(study.trials)                        # epochs after each trial, best so far
    spent.to_reach(threshold)                                 # epochs until a finished trial got there
    search.random_search_expected(values, costs, threshold)   # exact, from the grid's results
    search.storage_url()                                      # a SQLite file a later kernel resumes

A trial tells what it has spent with `trial.set_user_attr("epochs", epoch)` after each epoch, so
a pruned or interrupted trial is charged the epochs it really trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
import torch

from .. import ledger


def pooled(feats: dict[str, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    """(x_train, y_train, x_val, y_val): each review's token states averaged over its real tokens,
    standardized with the training split's mean and spread (so one learning-rate scale fits every
    encoder). `feats` is what costlab.probe.feature_sets returns, with "train" and "val" splits."""
    def mean_over_tokens(split):
        mask = split["attention_mask"].unsqueeze(-1).float()
        return (split["hidden"] * mask).sum(1) / mask.sum(1).clamp(min=1)
    x_train, x_val = mean_over_tokens(feats["train"]), mean_over_tokens(feats["val"])
    mean, spread = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    return (x_train - mean) / spread, feats["train"]["labels"], (x_val - mean) / spread, feats["val"]["labels"]


@dataclass(frozen=True)
class Spent:
    """A search's trials in the order they ran: cumulative cost and the best finished value so far."""
    cost: tuple[int, ...]  # cumulative epochs after each trial
    best: tuple[float, ...]  # best value of a completed trial so far (nan before the first completes)
    states: tuple[str, ...]

    def to_reach(self, threshold: float) -> float:
        """Epochs spent when a completed trial first reached `threshold` (inf if none did)."""
        for cost, best in zip(self.cost, self.best):
            if not math.isnan(best) and best >= threshold:
                return cost
        return math.inf


def spent(trials: list[optuna.trial.FrozenTrial]) -> Spent:
    """Cumulative epochs (each trial's "epochs" user attribute) and best-so-far, by trial number. A
    failed trial (an interrupted one) counts for what it spent before it stopped; a trial still
    running, or one that never reported, counts for nothing."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    done = sorted((t for t in trials if t.state in states and "epochs" in t.user_attrs), key=lambda t: t.number)
    total, best = 0, math.nan
    out = ([], [], [])
    for t in done:
        total += t.user_attrs["epochs"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            best = t.value if math.isnan(best) else max(best, t.value)
        for column, value in zip(out, (total, best, t.state.name)):
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
