import itertools
import math
import statistics

import optuna
import pytest
import torch

from costlab.lessons import search

optuna.logging.set_verbosity(optuna.logging.WARNING)
RUNGS = (3, 9, 27)


def _objective(calls=None, stop_in_trial=None):
    """A deterministic landscape over one index: 5 is best; each trial reports every epoch and
    records the epochs it spent, like lesson 09's objective."""
    def run(trial):
        if calls is not None:
            calls.append(trial.number)
        i = trial.suggest_int("i", 0, 9)
        final = 1 - abs(i - 5) / 10
        for epoch in range(1, RUNGS[-1] + 1):
            trial.set_user_attr("epochs", epoch)
            value = final * epoch / RUNGS[-1]
            trial.report(value, epoch)
            if trial.number == stop_in_trial and epoch == RUNGS[0]:
                raise KeyboardInterrupt(f"stopped in trial {trial.number}")
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value
    return run


def _pruner():
    return optuna.pruners.SuccessiveHalvingPruner(min_resource=RUNGS[0], reduction_factor=3)


def test_random_search_expectation_matches_every_order():
    values, costs = [0.5, 0.9, 0.7, 0.95, 0.2], [1, 2, 3, 4, 5]
    threshold = 0.9
    spent_per_order = []
    for order in itertools.permutations(range(len(values))):
        total = 0
        for i in order:
            total += costs[i]
            if values[i] >= threshold:
                break
        spent_per_order.append(total)
    assert search.random_search_expected(values, costs, threshold) == pytest.approx(statistics.mean(spent_per_order))
    with pytest.raises(ValueError):
        search.random_search_expected(values, costs, 2.0)


def test_full_trials_are_charged_in_full_pruned_ones_to_their_rung_and_reach_counts_finished_trials_only():
    full = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    full.optimize(_objective(), n_trials=6)
    ledger = search.spent(full.trials)
    assert ledger.cost == tuple(RUNGS[-1] * k for k in range(1, 7))
    assert ledger.best[-1] == max(t.value for t in full.trials)

    pruned = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0), pruner=_pruner())
    pruned.optimize(_objective(), n_trials=20)
    ledger = search.spent(pruned.trials)
    charged = [t.user_attrs["epochs"] for t in sorted(pruned.trials, key=lambda t: t.number)]
    assert list(ledger.cost) == list(itertools.accumulate(charged))
    assert {t.user_attrs["epochs"] for t in pruned.trials if t.state.name == "PRUNED"} <= set(RUNGS[:-1])
    assert any(t.state.name == "PRUNED" for t in pruned.trials)
    # A pruned trial's last report can be high, but only a finished trial counts as reaching.
    first_complete = next(k for k, state in enumerate(ledger.states) if state == "COMPLETE")
    assert ledger.to_reach(0.0) == ledger.cost[first_complete]
    assert math.isinf(ledger.to_reach(1.01))


def test_an_interrupted_study_resumes_without_repeating_finished_trials_and_its_partial_trial_is_charged(results_dir):
    url = search.storage_url()
    assert str(results_dir) in url

    def open_study():
        return optuna.create_study(storage=url, study_name="t", load_if_exists=True, direction="maximize",
                                   sampler=optuna.samplers.TPESampler(seed=0), pruner=_pruner())
    with pytest.raises(KeyboardInterrupt):
        open_study().optimize(_objective(stop_in_trial=4), n_trials=10)
    study = open_study()
    finished = [t.number for t in search.finished(study)]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert finished == [0, 1, 2, 3] and len(failed) == 1 and failed[0].params
    assert search.spent(study.trials).cost[-1] == sum(t.user_attrs["epochs"] for t in study.trials)
    assert failed[0].user_attrs["epochs"] == RUNGS[0]  # what it trained before the stop
    calls = []
    study.enqueue_trial(failed[0].params)
    study.optimize(_objective(calls), n_trials=None,
                   callbacks=[optuna.study.MaxTrialsCallback(10, states=(optuna.trial.TrialState.COMPLETE,
                                                                         optuna.trial.TrialState.PRUNED))])
    assert len(calls) == 6 and not set(calls) & set(finished)
    assert study.trials[calls[0]].params == failed[0].params
    assert len(search.finished(study)) == 10


def test_pooled_features_average_real_tokens_only_and_are_standardized_on_the_training_split():
    torch.manual_seed(0)
    hidden = torch.randn(6, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0]] * 6)
    hidden_padded = hidden.clone()
    hidden_padded[:, 2:] = 1e6  # padding positions must not count
    train = {"hidden": hidden_padded, "attention_mask": mask, "labels": torch.arange(6) % 2}
    val = {"hidden": hidden_padded[:2], "attention_mask": mask[:2], "labels": torch.tensor([0, 1])}
    x_train, y_train, x_val, y_val = search.pooled({"train": train, "val": val})
    expected = hidden[:, :2].mean(1)
    expected = (expected - expected.mean(0)) / expected.std(0)
    assert torch.allclose(x_train, expected, atol=1e-5)
    assert torch.allclose(x_val, expected[:2], atol=1e-5)  # scaled with the training split's statistics
    assert torch.equal(y_train, train["labels"]) and torch.equal(y_val, val["labels"])
