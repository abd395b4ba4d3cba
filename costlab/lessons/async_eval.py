"""Evaluate without making training wait: snapshots of the weights go to another process.

    evaluator = BackgroundEvaluator("costlab.lessons.async_eval:classification_task", {...}, core=1)
    evaluator.submit(step, model)        # a copy of the weights, in shared memory; returns at once
    results = evaluator.finish(fallback=task.evaluate)   # every snapshot's metrics, in step order

The trainer keeps each snapshot until its result arrives. If the evaluator process dies, training
goes on, the death is reported in `events`, and `finish` evaluates the snapshots still without
a result in the trainer: no result is lost. On CPU the evaluator is pinned to a core of its own;
on a GPU it is a separate process on the same device, which time-slices it (not yet measured on
a GPU; see eval_overlap.summary for how it is priced).
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

from .. import data, hardware, models
from ..evaluation import accuracy_variance, classification_scores


@dataclass
class Task:
    """What an evaluation needs: a model to load snapshots into, and how to score it."""
    model: nn.Module
    evaluate: Callable[[nn.Module], dict]
    tokenizer: object = None


TASK_TARGET = "costlab.lessons.async_eval:classification_task"


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


def snapshot(model: nn.Module, keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights (only `keys`, if given), in shared memory: sending it to the
    evaluator then passes a handle, not a second copy."""
    return {k: v.detach().to("cpu", copy=True).share_memory_()
            for k, v in model.state_dict().items() if keys is None or k in keys}


def load_task(target: str, kwargs: dict) -> Task:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)(**kwargs)


class BackgroundEvaluator:
    """A process that evaluates snapshots while the trainer goes on (see the module docstring).

    core: the CPU core to pin the evaluator to (None: leave it). die_after: fault injection, the
    evaluator exits abruptly after that many evaluations (to show and test that nothing is lost).
    """

    def __init__(self, task: str, task_kwargs: dict, *, core: int | None = None, threads: int = 1,
                 die_after: int | None = None):
        import torch.multiprocessing as mp

        ctx = mp.get_context("spawn")  # a fresh interpreter: no inherited threads or locks
        self._jobs, self._results = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=_evaluator_main, daemon=True, name="costlab-evaluator",
                                 args=(task, task_kwargs, core, threads, die_after, self._jobs,
                                       self._results))
        self.started_at = time.perf_counter()
        self._proc.start()
        self.pending: dict[int, dict] = {}  # step -> snapshot, kept until its result arrives
        self.results: dict[int, dict] = {}
        self.events: list[str] = []
        self.ready_sec: float | None = None
        self._dead = False
        self._stopped = False  # stopped on purpose (finish, stop): its exit is no death
        self._keys: set[str] | None = None

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
            self._drain(timeout_s=0.1)
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"the evaluator was not ready within {timeout_s:.0f} s")
        return time.perf_counter() - t0

    def submit(self, step: int, model: nn.Module) -> None:
        """Send a snapshot: the whole state the first time, then only what training changes
        (frozen weights are the same in the evaluator's copy, so sending them is waste)."""
        self._drain()
        first = self._keys is None
        if first:
            self._keys = changing_keys(model)
        snap = snapshot(model, None if first else self._keys)
        self.pending[step] = snap
        if not self._dead:
            self._jobs.put((step, snap))

    def alive(self) -> bool:
        self._drain()
        return not self._dead

    def finish(self, fallback: Callable[[nn.Module], dict] | None, model: nn.Module | None = None,
               timeout_s: float = 600) -> dict[int, dict]:
        """Wait for every submitted snapshot's result. Snapshots the evaluator did not answer
        (it died) are evaluated here with `fallback` on `model` (loaded with each snapshot)."""
        if not self._dead:
            self._jobs.put(None)
        deadline = time.perf_counter() + timeout_s
        while self.pending and not self._dead and time.perf_counter() < deadline:
            self._drain(timeout_s=0.1)
        if self.pending and not self._dead:
            self.events.append(f"the evaluator gave no result within {timeout_s:.0f} s; stopped it")
            self.stop()
        for step in sorted(self.pending):
            if fallback is None or model is None:
                raise RuntimeError(f"snapshots {sorted(self.pending)} have no result and no fallback")
            model.load_state_dict(self.pending[step], strict=False)  # frozen parts are there
            self.results[step] = {**fallback(model), "by": "trainer (evaluator gone)"}
        self.pending.clear()
        self.stop()
        return dict(sorted(self.results.items()))

    def stop(self) -> None:
        self._stopped = True
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def _drain(self, timeout_s: float = 0.0) -> None:
        """Collect what the evaluator sent; notice if it died."""
        self._read(timeout_s)
        if not self._dead and not self._proc.is_alive():
            self._read(0.2)  # what it sent before it exited is in the pipe by now
            self._dead = True
            if not self._stopped and (self.pending or self._proc.exitcode != 0):
                self.events.append(
                    f"the evaluator died (exit code {self._proc.exitcode}) after {len(self.results)} "
                    f"evaluation(s); training goes on, and at the end the trainer evaluates every "
                    f"snapshot still without a result ({len(self.pending)} so far)")

    def _read(self, timeout_s: float) -> None:
        while True:
            try:
                kind, step, payload = (self._results.get(timeout=timeout_s) if timeout_s
                                       else self._results.get_nowait())
            except queue.Empty:
                return
            timeout_s = 0.0
            if kind == "ready":
                self.ready_sec = time.perf_counter() - self.started_at
            else:
                self.results[step] = {**payload, "by": "evaluator"}
                self.pending.pop(step, None)  # its snapshot can go now


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the trainer dies, so an evaluator is never left orphaned."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _evaluator_main(task: str, kwargs: dict, core: int | None, threads: int, die_after: int | None,
                    jobs, results) -> None:
    _die_with_parent()
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(threads)
    t = load_task(task, kwargs)
    t.model.to(hardware.training_device())
    t.evaluate(t.model)  # warm-up (first-call allocations), part of the start-up, not of a result
    results.put(("ready", None, None))
    done = 0
    while (item := jobs.get()) is not None:
        if die_after is not None and done >= die_after:
            os._exit(3)  # fault injection: die abruptly, without a goodbye
        step, state = item
        t.model.load_state_dict(state, strict=False)  # after the first: what changed only
        results.put(("result", step, t.evaluate(t.model)))
        done += 1
