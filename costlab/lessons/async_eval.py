"""Evaluate without making training wait: the process plumbing of lesson 12.

The technique is written in the notebook: copy a snapshot of the weights, put it on the
evaluator's queue, keep training, collect the results by step. This module starts and stops the
evaluator process, notices when it dies, and holds the review-classifier task it evaluates:

    evaluator = BackgroundEvaluator(classification_task, {...}, core=1)
    evaluator.jobs.put((step, snapshot))   # the notebook's line; returns at once
    evaluator.arrived()                    # [(step, metrics), ...] so far, without waiting
    evaluator.finish()                     # the rest; ends early if the evaluator died

A dead evaluator is reported in `events` and its unanswered snapshots are left to the trainer
(the notebook keeps each snapshot until its result arrives). On CPU the evaluator is pinned to a
core of its own. On GPUs (not yet run on a GPU) it evaluates on a second GPU where there is one,
else on the trainer's GPU, where it time-slices the trainer and holds its own copy of the model
(see `eval_overlap.summary` for how each placement is priced).
"""
from __future__ import annotations

import ctypes
import importlib
import math
import os
import queue
import signal
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import data, models
from ..evaluation import accuracy_variance, classification_scores


@dataclass
class Task:
    """What an evaluation needs: a model to load snapshots into, and how to score it."""
    model: nn.Module
    evaluate: Callable[[nn.Module], dict]
    tokenizer: object = None


def classification_task(*, model: str | None = None, layers: int | None = None, seq_len: int = 32,
                        n_eval: int = 128, batch_size: int = 8, subsample: float | None = None,
                        seed: int = 0) -> Task:
    """The review classifier and its validation set (see `make_evaluate` for `subsample`)."""
    net, tokenizer = models.load(model or models.default_encoder(), task="classification",
                                 layers=layers, seed=seed)
    evaluate = make_evaluate(tokenizer, seq_len=seq_len, n_eval=n_eval, batch_size=batch_size,
                             subsample=subsample, seed=seed)
    return Task(net, evaluate, tokenizer)


def make_evaluate(tokenizer, *, seq_len: int, n_eval: int, batch_size: int,
                  subsample: float | None = None, seed: int = 0) -> Callable[[nn.Module], dict]:
    """Accuracy and loss on the first `n_eval` validation reviews, or, with `subsample`, on that
    fraction of them (drawn with a seed, the same every time) with the accuracy's standard error
    as an estimate of the full set's."""
    records = data.load_split("val", n_eval)
    population = len(records)
    if subsample is not None:
        if not 0 < subsample <= 1:
            raise ValueError(f"subsample must be in (0, 1], got {subsample}")
        order = torch.randperm(population, generator=torch.Generator().manual_seed(seed)).tolist()
        records = [records[i] for i in sorted(order[:max(2, round(subsample * population))])]
    batches = data.eval_batches(data.encode_classification(tokenizer, records, seq_len), batch_size)

    def evaluate(m: nn.Module) -> dict:
        t0 = time.perf_counter()
        out = classification_scores(m, batches)  # one pass: two would double what we hide
        out["seconds"] = time.perf_counter() - t0
        if subsample is not None:
            out["accuracy_se"] = accuracy_se(out["accuracy"], out["n"], population)
        return out

    return evaluate


def accuracy_se(p: float, n: int, population: int) -> float:
    """Standard error of an accuracy measured on n of `population` examples drawn without
    replacement, times the finite-population correction. Agresti-Coull
    (`evaluation.accuracy_variance`): the plain formula is zero for a subsample that scored
    100%, as if it could not be off at all (a full set at 98.8% says otherwise)."""
    fpc = (population - n) / (population - 1) if population > 1 else 0.0
    return math.sqrt(accuracy_variance(p, n) * fpc)


def changing_keys(model: nn.Module) -> set[str]:
    """State-dict entries that training can change: trainable parameters and buffers."""
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    return set(model.state_dict()) - frozen


def standard_errors_apart(estimate: float, truth: float, se: float) -> float:
    """|estimate - truth| in standard errors (0 when both agree exactly, inf for a zero SE)."""
    gap = abs(estimate - truth)
    if se > 0:
        return gap / se
    return 0.0 if gap == 0 else math.inf


def evaluator_device() -> tuple[str, str]:
    """(torch device, placement) for the evaluator: "cpu-core" on CPU; on GPUs "second-gpu"
    (cuda:1) where there are two, else "same-gpu" (cuda:0, shared with the trainer)."""
    if not torch.cuda.is_available():
        return "cpu", "cpu-core"
    if torch.cuda.device_count() >= 2:
        return "cuda:1", "second-gpu"
    return "cuda:0", "same-gpu"


def _load_task(task: Callable[..., Task] | str | bytes, kwargs: dict) -> Task:
    if isinstance(task, bytes):  # a function sent by value (defined in a notebook)
        import cloudpickle

        task = cloudpickle.loads(task)
    elif isinstance(task, str):  # "module:function"
        module, func = task.split(":")
        task = getattr(importlib.import_module(module), func)
    return task(**kwargs)


class BackgroundEvaluator:
    """A process that evaluates the snapshots put on `jobs` while the trainer goes on.

    task: a function returning a `Task` (one from a module goes by reference, one defined in a
    notebook by value, with cloudpickle), called with `task_kwargs` in the evaluator process.
    core: the CPU core to pin the evaluator to (None: leave it). die_after: fault injection, the
    evaluator exits abruptly after that many evaluations (to show that nothing is lost).
    """

    def __init__(self, task: Callable[..., Task] | str, task_kwargs: dict | None = None, *,
                 core: int | None = None, threads: int = 1, die_after: int | None = None,
                 device: str | None = None):
        import torch.multiprocessing as mp

        if callable(task) and getattr(task, "__module__", None) == "__main__":
            import cloudpickle

            task = cloudpickle.dumps(task)
        self.device = device or evaluator_device()[0]
        ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited threads or locks
        self.jobs, self._results = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=_evaluator_main, daemon=True, name="costlab-evaluator",
                                 args=(task, task_kwargs or {}, core, threads, die_after, self.device,
                                       self.jobs, self._results))
        self.started_at = time.time()  # wall clock: the evaluator's "ready" time is comparable
        self._proc.start()
        self.events: list[str] = []
        self.ready_sec: float | None = None
        self.answered = 0
        self._dead = self._done = self._closed = False
        self._stopped = False  # stopped on purpose (finish, stop): its exit is no death

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    @property
    def exitcode(self) -> int | None:
        """None while it runs; 0 after a clean finish; anything else: it died."""
        return self._proc.exitcode

    def wait_ready(self, timeout_s: float = 300) -> float:
        """Block until the evaluator has built its model; returns the seconds spent waiting."""
        t0 = time.perf_counter()
        while self.ready_sec is None and not self._dead:
            self._collect(timeout_s=0.1)
            if time.perf_counter() - t0 > timeout_s:
                self.stop()
                raise TimeoutError(f"the evaluator was not ready within {timeout_s:.0f} s")
        return time.perf_counter() - t0

    def alive(self) -> bool:
        """Whether the process still runs (after collecting what it sent)."""
        self._collect()
        return self._proc.is_alive()

    def arrived(self) -> list[tuple[int, dict]]:
        """The results that came back since the last call, without waiting."""
        return self._collect()

    def finish(self, timeout_s: float = 600) -> list[tuple[int, dict]]:
        """Say there are no more snapshots and wait for the results still due. Returns early
        (with what came back before) if the evaluator dies, or hangs past `timeout_s` (then it is
        stopped). After its last result it exits on its own; `stop` waits for that, so the
        trainer does not."""
        if not self._dead and not self._closed:
            self.jobs.put(None)
            self._closed = True
        got, deadline = [], time.perf_counter() + timeout_s
        while not self._done and not self._dead and time.perf_counter() < deadline:
            got += self._collect(timeout_s=0.05)
        if not self._done and not self._dead:
            self.events.append(f"the evaluator gave no answer within {timeout_s:.0f} s; stopped it")
            self.stop()
        return got

    def stop(self) -> None:
        self._stopped = True
        self.jobs.cancel_join_thread()  # snapshots a dead evaluator never read must not block exit
        if self._done:  # it said goodbye: let it exit on its own
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def _collect(self, timeout_s: float = 0.0) -> list[tuple[int, dict]]:
        """Read what the evaluator sent; notice if it died."""
        got = self._read(timeout_s)
        if not self._dead and not self._done and not self._proc.is_alive():
            got += self._read(0.2)  # what it sent before it exited is in the pipe by now
            self._dead = not self._done
            if self._dead and not self._stopped:
                self.events.append(
                    f"the evaluator died (exit code {self._proc.exitcode}) after {self.answered} "
                    f"evaluation(s); training went on, and the trainer evaluates every snapshot "
                    f"still without a result")
        return got

    def _read(self, timeout_s: float) -> list[tuple[int, dict]]:
        got = []
        while True:
            try:
                kind, step, payload = (self._results.get(timeout=timeout_s) if timeout_s
                                       else self._results.get_nowait())
            except queue.Empty:
                return got
            timeout_s = 0.0
            if kind == "ready":  # when it was ready, not when the trainer noticed
                self.ready_sec = payload - self.started_at
            elif kind == "done":
                self._done = True
            else:
                self.answered += 1
                got.append((step, {**payload, "by": "evaluator"}))


def die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so a helper process is never left orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _evaluator_main(task, kwargs: dict, core: int | None, threads: int, die_after: int | None,
                    device: str, jobs, results) -> None:
    die_with_parent()
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(threads)
    t = _load_task(task, kwargs)
    t.model.to(device)
    t.evaluate(t.model)  # warm-up (first-call allocations), part of the start-up, not of a result
    results.put(("ready", None, time.time()))
    done = 0
    while (item := jobs.get()) is not None:
        if die_after is not None and done >= die_after:
            os._exit(3)  # fault injection: die abruptly, without a goodbye
        step, state = item
        t.model.load_state_dict(state, strict=False)  # what training changes; the rest is here
        metrics = t.evaluate(t.model)
        if device.startswith("cuda"):  # the memory its own copy of the model costs that GPU
            metrics["evaluator_peak_mem_bytes"] = torch.cuda.max_memory_allocated(device)
        results.put(("result", step, metrics))
        done += 1
    results.put(("done", None, None))
