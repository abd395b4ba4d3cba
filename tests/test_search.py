import itertools
import math
import statistics

import optuna
import pytest

from costlab.lessons import search

optuna.logging.set_verbosity(optuna.logging.WARNING)
SPACE = {"lr": [0.1, 0.2, 0.3, 0.4], "width": [1, 2]}


def _book():
    def curve(params):  # a deterministic landscape: lr 0.3 is best, wider is a bit better
        final = 1 - abs(params["lr"] - 0.3) - 0.01 * (2 - params["width"])
        return search.Curve((10, 30, 90), (final / 3, final / 2, final), flops_per_step=100, eval_flops=7)
    return search.CurveBook(curve)


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


def test_full_budget_trials_are_charged_in_full_and_pruned_ones_to_their_rung():
    book = _book()
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.GridSampler(SPACE, seed=0))
    study.optimize(search.objective(book, SPACE, rungs=None), n_trials=8)
    spent = search.spent(study.trials)
    assert spent.flops[-1] == 8 * (90 * 100 + 7) and book.misses == 8
    pruned = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0),
                                 pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=10, reduction_factor=3))
    pruned.optimize(search.objective(book, SPACE, rungs=[10, 30, 90]), n_trials=12)
    for t in pruned.trials:
        assert t.user_attrs["flops"] == t.user_attrs["steps"] * 100 + 7 * [10, 30, 90].index(t.user_attrs["steps"]) + 7
    assert book.misses == 8  # everything came from the book
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in pruned.trials)
    flops, steps = search.spent(pruned.trials).to_reach(0.0)
    assert flops is not None and steps is not None


def test_an_interrupted_study_resumes_without_repeating_finished_trials(results_dir):
    book, url = _book(), search.storage_url()
    assert str(results_dir) in url

    def open_study():
        return optuna.create_study(storage=url, study_name="t", load_if_exists=True, direction="maximize",
                                   sampler=optuna.samplers.TPESampler(seed=0),
                                   pruner=optuna.pruners.SuccessiveHalvingPruner(min_resource=10, reduction_factor=3))
    with pytest.raises(KeyboardInterrupt):
        open_study().optimize(search.objective(book, SPACE, rungs=[10, 30, 90], stop_in_trial=4), n_trials=10)
    study = open_study()
    finished = [t.number for t in search.finished(study)]
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert finished == [0, 1, 2, 3] and len(failed) == 1 and failed[0].params
    calls = []
    study.enqueue_trial(failed[0].params)
    study.optimize(search.objective(book, SPACE, rungs=[10, 30, 90], calls=calls), n_trials=None,
                   callbacks=[optuna.study.MaxTrialsCallback(10, states=(optuna.trial.TrialState.COMPLETE,
                                                                         optuna.trial.TrialState.PRUNED))])
    assert len(calls) == 6 and not set(calls) & set(finished)
    assert study.trials[calls[0]].params == failed[0].params
    assert len(search.finished(study)) == 10
    # the interrupted trial's partial compute is counted
    assert search.spent(study.trials).flops[-1] > sum(t.user_attrs["flops"] for t in search.finished(study))
    assert not math.isnan(search.spent(study.trials).best[-1])


def test_head_curve_is_deterministic_and_charges_its_evaluations():
    import torch

    from costlab import data

    torch.manual_seed(0)
    split = {"hidden": torch.randn(32, 5, 8), "attention_mask": torch.ones(32, 5, dtype=torch.long),
             "labels": torch.randint(0, 2, (32,))}
    val = data.eval_batches(split, 16)
    params = {"lr": 1e-2, "hidden": 4, "dropout": 0.0}
    a = search.head_curve(split, val, params, steps=6, batch_size=4, eval_every=3)
    b = search.head_curve(split, val, params, steps=6, batch_size=4, eval_every=3)
    assert a == b and a.steps == (3, 6) and a.eval_flops > 0 and a.flops_per_step > 0
    assert a.cost(6, 2) == 6 * a.flops_per_step + 2 * a.eval_flops
