"""The experiment of 12_async_evaluation, run in a fresh process with `costlab.isolate`: the
same training run with evaluation every k steps, done by two functions the notebook writes
(`inline(lab)`: the trainer evaluates; `background(lab)`: snapshots go to an evaluator process),
plus the same inline run on a subsample of the eval set and a background run whose evaluator dies.

    result = isolate(eval_overlap.run, inline_eval, background_eval, subsample=0.25)

This module does what is not the technique: pinning the trainer to one core and the evaluator to
another (on CPU a core plays the part of the accelerator, and the evaluator must not take the
trainer's), probing whether the second core adds throughput, starting and stopping evaluators,
timing, and handing every variant the same initial weights and the same batches (so its
snapshots are the same weights as the inline run's).
"""
from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .. import data, hardware, profiles
from .async_eval import BackgroundEvaluator, changing_keys, classification_task, die_with_parent, \
    evaluator_device, make_evaluate
from ..train import TrainConfig, TrainResult, train

VARIANTS = ("inline", "background", "inline_subsampled", "evaluator_dies")


def eval_steps(steps: int, every: int) -> list[int]:
    """The steps at which `costlab.train.train` evaluates: every `every` steps, and the last."""
    return [s for s in range(1, steps + 1) if s % every == 0 or s == steps]


def cores() -> tuple[int, int]:
    """(trainer core, evaluator core): two different cores where there are two."""
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    return mine[0], mine[1] if len(mine) > 1 else mine[0]


def _work() -> float:
    """A fixed amount of single-thread compute (180 products of 384x384 matrices, about 27 GFLOP:
    tenths of a second on one core, long beside the scheduler's jitter); returns its seconds."""
    a = torch.randn(384, 384, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    for _ in range(180):
        a @ a
    return time.perf_counter() - started


def _work_on(core: int, ready, go, out) -> None:
    die_with_parent()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    ready.set()
    while go.get(timeout=120):  # one round of work per token; None ends it
        out.put(_work())


def parallel_capacity(other_core: int, rounds: int = 3) -> float:
    """How many cores' worth of throughput this core and `other_core` give together (2.0: two
    independent cores; about 1.0 on a machine so busy, or so shared, that the second core adds
    nothing). Background evaluation can only hide what a second core can take. The median of
    `rounds` rounds of both cores working at once, because one short round is at the mercy of
    the scheduler's jitter on a shared VM."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    ready, go, out = ctx.Event(), ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=_work_on, args=(other_core, ready, go, out), daemon=True)
    proc.start()
    try:
        if not ready.wait(timeout=120):
            raise RuntimeError(f"the capacity probe on core {other_core} did not start (exit code {proc.exitcode})")
        alone = min(_work() for _ in range(2))  # the second one is warm
        together = []
        for _ in range(rounds):
            go.put(True)
            mine = _work()
            together.append(max(mine, out.get(timeout=120)))
        go.put(None)
        proc.join(timeout=30)
    finally:
        if proc.is_alive():
            proc.kill()
    return 2 * alone / statistics.median(together)


def freeze_input_embeddings(model: nn.Module) -> int:
    """Freeze the token embedding table (found from the model, any architecture); returns its
    parameter count. Its AdamW update and dense gradient are most of a CPU step on a truncated
    model, which would make evaluation look cheap next to training; frozen, a step costs about
    what it costs relative to evaluation on an accelerator."""
    table = model.get_input_embeddings().weight
    table.requires_grad_(False)
    return table.numel()


@dataclass
class Lab:
    """What the notebook's function gets for one run: the model (at the initial weights), how to
    evaluate it and at which steps, and, for a background run, the evaluator process."""
    model: nn.Module
    evaluate: Callable[[nn.Module], dict]
    schedule: list[int]  # the steps at which training stops to evaluate (or hand a snapshot off)
    changing: set[str]  # state-dict entries training changes; the evaluator built the rest itself
    evaluator: BackgroundEvaluator | None
    batches: object
    cfg: TrainConfig
    result: TrainResult | None = None
    trained_at: float | None = None
    _calls: list[int] = field(default_factory=list)

    def train(self, evaluate: Callable[[nn.Module], object]) -> None:
        """Train for the run's steps; at each step of `schedule`, call `evaluate(model)`."""
        def at_schedule(model: nn.Module) -> float:
            out = evaluate(model)
            return out["accuracy"] if isinstance(out, dict) and "accuracy" in out else math.nan

        self.result = train(self.model, self.batches, self.cfg, evaluate=at_schedule)
        self.trained_at = time.perf_counter()


def run(inline: Callable[[Lab], dict], background: Callable[[Lab], dict], *,
        variants: list[str] = VARIANTS, model: str | None = None, layers: int | None = None,
        steps: int | None = None, eval_every: int | None = None, subsample: float = 0.25,
        die_after: int = 1, freeze_embeddings: bool = True, lr: float = 1e-4, seed: int = 0,
        profile: str | None = None) -> dict:
    """Train the review classifier once per variant; return wall time, busy time and evaluations.

    inline, background: the notebook's functions, each `fn(lab) -> {step: metrics}`.
    inline_subsampled: `inline` on `subsample` of the eval set (a cheaper evaluation).
    evaluator_dies: `background`, 3 evaluation intervals, with an evaluator that exits after
    `die_after` evaluations; the trainer must go on and still deliver every snapshot's result.
    """
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {VARIANTS}")
    p = profiles.get(profile)
    steps, every = steps or p.train_steps, eval_every or p.eval_every
    trainer_core, eval_core = cores()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {trainer_core})
    torch.set_num_threads(1)
    # Evaluation keeps no activations for backward: batches 4x the training batch fit the same
    # memory and run faster per example (the common practice).
    task_kwargs = {"model": model, "layers": p.encoder_layers if layers is None else layers,
                   "seq_len": p.cls_seq_len, "n_eval": p.n_eval, "batch_size": 4 * p.batch_size,
                   "seed": seed}
    # The evaluator's core, probed while it is idle: before the background evaluator starts
    # building its model there (probed during that start-up, it read as no spare core at all).
    capacity = [parallel_capacity(eval_core)]
    device, placement = evaluator_device()
    start = lambda **kw: BackgroundEvaluator(classification_task, task_kwargs, core=eval_core, device=device, **kw)
    # Start the background evaluator first: it builds its model on its own core while the trainer
    # builds its own and runs the inline variant (which leaves that core idle).
    early = start() if "background" in variants else None
    task = classification_task(**task_kwargs)
    task.model.to(hardware.training_device())  # GPU path not yet run on a GPU
    frozen = freeze_input_embeddings(task.model) if freeze_embeddings else 0
    cheap = make_evaluate(task.tokenizer, subsample=subsample,
                          **{k: task_kwargs[k] for k in ("seq_len", "n_eval", "batch_size", "seed")})
    initial = {k: v.clone() for k, v in task.model.state_dict().items()}
    encoded = data.encode_classification(task.tokenizer, data.load_split("train", p.n_train), p.cls_seq_len)
    out = {"cores": {"trainer": trainer_core, "evaluator": eval_core}, "steps": steps,
           "eval_every": every, "n_eval": p.n_eval, "subsample": subsample, "frozen_params": frozen,
           "evaluator_placement": placement, "variants": {}, "parallel_capacity": capacity}
    for variant in variants:
        if variant == "inline_subsampled":  # again after the pair timed (the evaluator idle by then)
            capacity.append(parallel_capacity(eval_core))
        n_steps = steps if variant != "evaluator_dies" else min(steps, 3 * every)
        evaluator = early if variant == "background" else None
        if variant == "evaluator_dies":  # started only now: its start-up must not slow the others
            evaluator = start(die_after=die_after)
        task.model.load_state_dict(initial)
        lab = Lab(task.model, cheap if variant == "inline_subsampled" else task.evaluate,
                  eval_steps(n_steps, every), changing_keys(task.model), evaluator,
                  data.batches(encoded, p.batch_size, seed=seed),
                  TrainConfig(steps=n_steps, lr=lr, eval_every=every, seed=seed, count_flops=False, progress=False))
        fn = inline if evaluator is None else background
        out["variants"][variant] = _time(fn, lab)
    return out


def _time(fn: Callable[[Lab], dict], lab: Lab) -> dict:
    """Run the notebook's function on `lab` and time it; evaluator start-up is not part of it."""
    evaluator = lab.evaluator
    try:
        waited = evaluator.wait_ready() if evaluator is not None else 0.0
        started = time.perf_counter()
        evals = fn(lab)
        wall = time.perf_counter() - started
    finally:
        if evaluator is not None:
            evaluator.stop()
    if sorted(int(s) for s in evals) != lab.schedule:
        raise ValueError(f"{getattr(fn, '__name__', fn)} returned results for steps {sorted(evals)}, "
                         f"expected one per evaluation step {lab.schedule}")
    result = lab.result
    return {"wall_sec": wall, "train_sec": result.train_seconds, "steps_done": len(result.points),
            "busy_fraction": result.train_seconds / wall,
            "trainer_eval_sec": result.eval_seconds,  # inline: evaluating; background: handing off
            "final_wait_sec": wall - (lab.trained_at - started),
            "evaluator_ready_sec": evaluator.ready_sec if evaluator else None,
            "waited_for_evaluator_start_sec": waited,
            "events": evaluator.events if evaluator else [],
            "evals": [{"step": int(s), "by": "trainer", **r} for s, r in sorted(evals.items())]}


def summary(result: dict, usd_per_device_hour: float | None) -> dict[str, dict]:
    """Ledger metrics and quality of each variant: wall time, trainer busy fraction, the cost
    with every device paid for the whole wall time, and the last snapshot's quality.

    How the evaluator is priced depends on where it ran. On CPU it rents a second core, and on
    a second GPU a second GPU: two devices for the whole run. On the trainer's own GPU it rents
    nothing more, but it is not free: without MPS the two processes take turns on the GPU, so
    its evaluations lengthen the trainer's wall time (already in `wall_sec`, priced), and its copy
    of the model takes GPU memory (`evaluator_peak_mem_bytes`, beside the metrics)."""
    placement = result.get("evaluator_placement", "cpu-core")
    out = {}
    for name, v in result["variants"].items():
        background = name in ("background", "evaluator_dies")
        devices = 2 if background and placement != "same-gpu" else 1
        last = v["evals"][-1]
        cost = None if usd_per_device_hour is None else devices * usd_per_device_hour * v["wall_sec"] / 3600
        by_evaluator = [e for e in v["evals"] if e["by"] == "evaluator"]
        out[name] = {"metrics": {"wall_sec": v["wall_sec"], "busy_fraction": v["busy_fraction"], "cost_usd": cost},
                     "quality": {"accuracy": last["accuracy"], "eval_loss": last["eval_loss"]},
                     "devices": devices, "placement": placement if background else "trainer",
                     "evaluator_sec": sum(e["seconds"] for e in by_evaluator),
                     "evaluator_peak_mem_bytes": max((e.get("evaluator_peak_mem_bytes", 0) for e in by_evaluator),
                                                     default=0) or None}
    return out


def agreement(a: list[dict], b: list[dict]) -> dict:
    """How far two runs' evaluations of the same snapshots (same steps) are apart."""
    by_step = {e["step"]: e for e in b}
    shared = [(e, by_step[e["step"]]) for e in a if e["step"] in by_step]
    return {"snapshots": len(shared),
            "max_abs_diff_eval_loss": max((abs(x["eval_loss"] - y["eval_loss"]) for x, y in shared), default=None),
            "max_abs_diff_accuracy": max((abs(x["accuracy"] - y["accuracy"]) for x, y in shared), default=None)}
