"""costlab.lessons.async_eval: snapshots evaluated in another process give the inline numbers; a
dead or hung evaluator is noticed and stopped; how each evaluator placement is priced. Uses a
tiny model (tests.dist_workers.tiny_task)."""
import math
import time

import pytest
import torch

from costlab import isolate
from costlab.lessons import async_eval, eval_overlap
from tests.dist_workers import tiny_task

def _snapshots(model, steps):
    """Change the weights between snapshots, as training would; yield each snapshot with the
    inline evaluations so far."""
    task = tiny_task()
    expected = {}
    for step in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.1 * step)
        task.model.load_state_dict(model.state_dict())
        expected[step] = task.evaluate(task.model)
        yield step, {k: v.detach().clone() for k, v in model.state_dict().items()}, expected


def test_background_results_equal_inline_on_the_same_snapshots():
    model = tiny_task().model
    evaluator = async_eval.BackgroundEvaluator(tiny_task, core=None)  # a function, by reference
    try:
        for step, snapshot, expected in _snapshots(model, [1, 2, 3]):
            evaluator.jobs.put((step, snapshot))
        results = dict(evaluator.arrived() + evaluator.finish())
    finally:
        evaluator.stop()
    assert sorted(results) == [1, 2, 3]
    assert all(r["by"] == "evaluator" for r in results.values())
    assert all(results[s]["eval_loss"] == expected[s]["eval_loss"] for s in results)
    assert not evaluator.alive() and evaluator.events == [] and evaluator.exitcode == 0


def test_a_dead_evaluator_is_reported_and_finish_returns_what_came_back():
    model = tiny_task().model
    evaluator = async_eval.BackgroundEvaluator("tests.dist_workers:tiny_task", die_after=1, core=None)
    try:
        for step, snapshot, expected in _snapshots(model, [1, 2, 3]):
            evaluator.jobs.put((step, snapshot))
        results = dict(evaluator.finish(timeout_s=60))
    finally:
        evaluator.stop()
    assert sorted(results) == [1]  # 2 and 3 are the trainer's to evaluate (the notebook kept them)
    assert math.isclose(results[1]["eval_loss"], expected[1]["eval_loss"], rel_tol=1e-9)
    assert any("died (exit code 3) after 1 evaluation" in e for e in evaluator.events)
    assert evaluator.exitcode == 3


def test_an_evaluator_that_raises_is_noticed_without_waiting_for_the_timeout():
    evaluator = async_eval.BackgroundEvaluator(tiny_task, core=None)
    evaluator.wait_ready(timeout_s=60)
    evaluator.jobs.put((1, {"weight": torch.zeros(3, 3)}))  # the wrong shape: loading it raises
    assert evaluator.finish(timeout_s=60) == []
    assert not evaluator.alive() and evaluator.exitcode == 1
    assert any("died (exit code 1) after 0 evaluation" in e for e in evaluator.events)


def test_changing_keys_leave_out_frozen_weights():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    assert async_eval.changing_keys(model) == {"1.weight", "1.bias"}


def test_a_same_gpu_evaluator_is_priced_as_its_share_not_as_free_nor_a_second_gpu():
    def run(placement):
        ev = [{"step": 5, "by": "evaluator", "accuracy": 0.5, "eval_loss": 0.7, "seconds": 0.4,
               "evaluator_peak_mem_bytes": 2_000_000}]
        return {"evaluator_placement": placement, "variants": {
            "inline": {"wall_sec": 10.0, "busy_fraction": 0.6, "evals": [{**ev[0], "by": "trainer"}]},
            "background": {"wall_sec": 9.0, "busy_fraction": 0.9, "evals": ev}}}

    price = 3.6  # USD per device-hour: 0.001 USD per device-second
    cpu = eval_overlap.summary(run("cpu-core"), price)
    assert cpu["background"]["devices"] == 2 and cpu["background"]["metrics"]["cost_usd"] == pytest.approx(0.018)
    assert eval_overlap.summary(run("second-gpu"), price)["background"]["devices"] == 2
    gpu = eval_overlap.summary(run("same-gpu"), price)["background"]
    # one GPU paid for the whole (time-sliced, longer) wall time, and the memory of its copy
    assert gpu["devices"] == 1 and gpu["metrics"]["cost_usd"] == pytest.approx(0.009)
    assert gpu["evaluator_sec"] == 0.4 and gpu["evaluator_peak_mem_bytes"] == 2_000_000
    assert cpu["inline"]["devices"] == 1 and cpu["inline"]["evaluator_peak_mem_bytes"] is None


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


def _start_evaluator_then_hang(pid_file: str) -> dict:
    evaluator = async_eval.BackgroundEvaluator(tiny_task, core=None)
    evaluator.wait_ready(timeout_s=60)
    with open(pid_file, "w") as f:
        f.write(str(evaluator.pid))
    while True:
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"  # a zombie has stopped running
    except FileNotFoundError:
        return True


def test_a_run_stopped_at_its_timeout_leaves_no_evaluator_behind(tmp_path):
    pid_file = tmp_path / "evaluator.pid"
    with pytest.raises(isolate.IsolatedRunFailed, match="ran past"):
        isolate.isolate(_start_evaluator_then_hang, str(pid_file), timeout_s=15)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid)
