"""costlab.lessons.async_eval: snapshots evaluated in another process give the inline numbers, and a
dead evaluator loses no result. Uses a tiny model (tests.dist_workers.tiny_task)."""
import math

import pytest
import torch

from costlab.lessons import async_eval, eval_overlap
from tests.dist_workers import tiny_task

TASK = "tests.dist_workers:tiny_task"


def _states(model, steps):
    """Change the weights between snapshots, as training would; return the inline evaluations."""
    task = tiny_task()
    expected = {}
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * step)
        task.model.load_state_dict(model.state_dict())
        expected[step] = task.evaluate(task.model)
        yield step, expected


def test_background_results_equal_inline_on_the_same_snapshots():
    model = tiny_task().model
    evaluator = async_eval.BackgroundEvaluator(TASK, {}, core=None)
    try:
        for step, expected in _states(model, [1, 2, 3]):
            evaluator.submit(step, model)
        results = evaluator.finish(fallback=None)
    finally:
        evaluator.stop()
    assert sorted(results) == [1, 2, 3]
    assert all(r["by"] == "evaluator" for r in results.values())
    assert all(results[s]["eval_loss"] == expected[s]["eval_loss"] for s in results)
    assert not evaluator.alive() and evaluator.events == []


def test_a_dead_evaluator_loses_no_result_and_is_reported():
    model = tiny_task().model
    evaluator = async_eval.BackgroundEvaluator(TASK, {}, core=None, die_after=1)
    fallback = tiny_task()
    try:
        for step, expected in _states(model, [1, 2, 3]):
            evaluator.submit(step, model)
        results = evaluator.finish(fallback=fallback.evaluate, model=fallback.model)
    finally:
        evaluator.stop()
    assert sorted(results) == [1, 2, 3]
    assert results[1]["by"] == "evaluator"
    assert results[2]["by"].startswith("trainer") and results[3]["by"].startswith("trainer")
    assert all(math.isclose(results[s]["eval_loss"], expected[s]["eval_loss"], rel_tol=1e-9) for s in results)
    assert any("died (exit code 3)" in e for e in evaluator.events)
    assert evaluator.exitcode == 3


def test_without_a_fallback_a_lost_snapshot_is_an_error():
    model = tiny_task().model
    evaluator = async_eval.BackgroundEvaluator(TASK, {}, core=None, die_after=0)
    try:
        evaluator.submit(1, model)
        with pytest.raises(RuntimeError, match="no result and no fallback"):
            evaluator.finish(fallback=None)
    finally:
        evaluator.stop()


def test_snapshots_after_the_first_carry_only_what_training_changes():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    assert async_eval.changing_keys(model) == {"1.weight", "1.bias"}
    snap = async_eval.snapshot(model, async_eval.changing_keys(model))
    assert set(snap) == {"1.weight", "1.bias"} and all(t.is_shared() for t in snap.values())
    assert snap["1.weight"].data_ptr() != model[1].weight.data_ptr()  # a copy, not a view


def test_subsample_standard_error():
    assert async_eval.accuracy_se(0.5, 32, 128) == pytest.approx(math.sqrt(0.25 / 36 * 96 / 127))
    # A subsample at 100% still has an error bar (the plain formula gave 0, so any gap was "inf SE")
    perfect = async_eval.accuracy_se(1.0, 64, 256)
    assert 0.01 < perfect < 0.03
    assert async_eval.standard_errors_apart(1.0, 0.988, perfect) < 3
    assert async_eval.accuracy_se(0.5, 128, 128) == 0.0  # the whole set: no sampling error
    assert async_eval.standard_errors_apart(0.6, 0.5, 0.05) == pytest.approx(2.0)
    assert async_eval.standard_errors_apart(0.5, 0.5, 0.0) == 0.0
    assert async_eval.standard_errors_apart(0.6, 0.5, 0.0) == math.inf


def test_eval_schedule_and_agreement():
    assert eval_overlap.eval_steps(12, 5) == [5, 10, 12]
    a = [{"step": 5, "eval_loss": 0.7, "accuracy": 0.5}, {"step": 10, "eval_loss": 0.6, "accuracy": 0.6}]
    b = [{"step": 5, "eval_loss": 0.7, "accuracy": 0.5}]
    assert eval_overlap.agreement(a, b) == {"snapshots": 1, "max_abs_diff_eval_loss": 0.0,
                                            "max_abs_diff_accuracy": 0.0}


def test_the_spare_core_probe_measures_and_leaves_no_process_behind():
    import multiprocessing

    _, other = eval_overlap.cores()
    capacity = eval_overlap.parallel_capacity(other, rounds=2)
    # two cores at most double one core's throughput; below 0.5 the rounds were not run together
    assert 0.5 < capacity < 2.3
    assert not [p for p in multiprocessing.active_children() if p.is_alive()]
