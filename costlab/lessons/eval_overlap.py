"""The experiment of 12_async_evaluation, run in a fresh process by `costlab.distributed.launch`:
the same training run with evaluation every k steps, inline (training waits) and in the
background (`costlab.lessons.async_eval.BackgroundEvaluator`), plus a run whose evaluator dies.

    distributed.launch("costlab.lessons.eval_overlap:run", torchrun=False, variants=["inline", "background"])

The trainer is pinned to one core, the evaluator to another: on CPU a core plays the part of the
accelerator, and the evaluator must not take the trainer's. Every variant starts from the same
weights and sees the same batches, so its snapshots are the same weights as the inline run's.
"""
from __future__ import annotations

import os
import statistics
import time

import torch

from .. import data, hardware, profiles
from .async_eval import TASK_TARGET, BackgroundEvaluator, classification_task, make_evaluate
from ..train import TrainConfig, train

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


def freeze_input_embeddings(model: torch.nn.Module) -> int:
    """Freeze the token embedding table (found from the model, any architecture); returns its
    parameter count. Its AdamW update and dense gradient are most of a CPU step on a truncated
    model, which would make evaluation look cheap next to training; frozen, a step costs about
    what it costs relative to evaluation on an accelerator."""
    table = model.get_input_embeddings().weight
    table.requires_grad_(False)
    return table.numel()


def run(*, variants: list[str] = ("inline", "background"), model: str | None = None,
        layers: int | None = None, steps: int | None = None, eval_every: int | None = None,
        subsample: float = 0.25, die_after: int = 1, freeze_embeddings: bool = True,
        lr: float = 1e-4, seed: int = 0, profile: str | None = None) -> dict:
    """Train the review classifier once per variant; return wall time, busy time and evaluations.

    inline_subsampled: inline, on `subsample` of the eval set (a cheaper evaluation).
    evaluator_dies: 3 evaluation intervals with an evaluator that exits after `die_after`
    evaluations; the trainer must go on and still deliver every snapshot's result.
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
    # Start the background evaluator first: it builds its model on its own core while the trainer
    # builds its own and runs the inline variant (which leaves that core idle).
    background = (BackgroundEvaluator(TASK_TARGET, task_kwargs, core=eval_core)
                  if "background" in variants else None)
    task = classification_task(**task_kwargs)
    # GPU path, not yet measured on a GPU: trainer and evaluator are two processes on GPU 0,
    # which time-slice it (see `summary` for how that is priced).
    task.model.to(hardware.training_device())
    frozen = freeze_input_embeddings(task.model) if freeze_embeddings else 0
    cheap = make_evaluate(task.tokenizer, subsample=subsample,
                          **{k: task_kwargs[k] for k in ("seq_len", "n_eval", "batch_size", "seed")})
    initial = {k: v.clone() for k, v in task.model.state_dict().items()}
    encoded = data.encode_classification(task.tokenizer, data.load_split("train", p.n_train), p.cls_seq_len)
    out = {"cores": {"trainer": trainer_core, "evaluator": eval_core}, "steps": steps,
           "eval_every": every, "n_eval": p.n_eval, "subsample": subsample,
           "frozen_params": frozen, "variants": {}, "parallel_capacity": capacity}
    for variant in variants:
        if variant == "inline_subsampled":  # again after the pair timed (the evaluator idle by then)
            capacity.append(parallel_capacity(eval_core))
        n_steps = steps if variant != "evaluator_dies" else min(steps, 3 * every)
        cfg = TrainConfig(steps=n_steps, lr=lr, eval_every=every, seed=seed, count_flops=False,
                          progress=False)
        evaluator = background if variant == "background" else None
        if variant == "evaluator_dies":  # started only now: its start-up must not slow the other
            evaluator = BackgroundEvaluator(TASK_TARGET, task_kwargs, core=eval_core, die_after=die_after)
        task.model.load_state_dict(initial)
        batches = data.batches(encoded, p.batch_size, seed=seed)
        evaluate = cheap if variant == "inline_subsampled" else task.evaluate
        out["variants"][variant] = _train_once(task.model, evaluate, batches, cfg, evaluator)
    return out


def _train_once(model, evaluate, batches, cfg: TrainConfig, evaluator: BackgroundEvaluator | None) -> dict:
    """One training run; evaluation inline when `evaluator` is None, else in the background."""
    schedule = eval_steps(cfg.steps, cfg.eval_every)
    evals: dict[int, dict] = {}
    waited = evaluator.wait_ready() if evaluator is not None else 0.0

    def inline(model) -> float:
        step = schedule[len(evals)]
        evals[step] = {**evaluate(model), "by": "trainer"}
        return evals[step]["accuracy"]

    submitted: list[int] = []

    def background(model) -> float:
        step = schedule[len(submitted)]
        evaluator.submit(step, model)  # returns at once: the trainer goes on
        submitted.append(step)
        return float("nan")  # the metric arrives later

    started = time.perf_counter()
    result = train(model, batches, cfg, evaluate=background if evaluator else inline)
    trained = time.perf_counter()
    if evaluator is not None:  # wait for the last results; a dead evaluator's share is done here
        evals = evaluator.finish(fallback=evaluate, model=model)
    wall = time.perf_counter() - started
    return {"wall_sec": wall, "train_sec": result.train_seconds, "steps_done": len(result.points),
            "busy_fraction": result.train_seconds / wall,
            "trainer_eval_sec": result.eval_seconds,  # inline: evaluating; background: snapshotting
            "final_wait_sec": wall - (trained - started),
            "evaluator_ready_sec": evaluator.ready_sec if evaluator else None,
            "waited_for_evaluator_start_sec": waited,
            "events": evaluator.events if evaluator else [],
            "evals": [{"step": s, **r} for s, r in sorted(evals.items())]}


def summary(result: dict, usd_per_device_hour: float | None) -> dict[str, dict]:
    """Ledger metrics and quality of each variant: wall time, trainer busy fraction, the cost
    with every device paid for the whole wall time, and the last snapshot's quality. The
    background evaluator is priced as a second device everywhere: on CPU it rents a second
    core; on a GPU a second process does not use the trainer's idle capacity for free (without
    MPS, processes time-slice a busy GPU, and each holds its own copy of the model)."""
    out = {}
    for name, v in result["variants"].items():
        devices = 2 if name in ("background", "evaluator_dies") else 1
        last = v["evals"][-1]
        cost = None if usd_per_device_hour is None else devices * usd_per_device_hour * v["wall_sec"] / 3600
        out[name] = {"metrics": {"wall_sec": v["wall_sec"], "busy_fraction": v["busy_fraction"], "cost_usd": cost},
                     "quality": {"accuracy": last["accuracy"], "eval_loss": last["eval_loss"]},
                     "devices": devices}
    return out


def agreement(a: list[dict], b: list[dict]) -> dict:
    """How far two runs' evaluations of the same snapshots (same steps) are apart."""
    by_step = {e["step"]: e for e in b}
    shared = [(e, by_step[e["step"]]) for e in a if e["step"] in by_step]
    return {"snapshots": len(shared),
            "max_abs_diff_eval_loss": max((abs(x["eval_loss"] - y["eval_loss"]) for x, y in shared), default=None),
            "max_abs_diff_accuracy": max((abs(x["accuracy"] - y["accuracy"]) for x, y in shared), default=None)}
