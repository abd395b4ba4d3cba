"""The rank code of 10_data_parallelism: DDP on N ranks, and on 1 rank the alternatives at equal
effective batch (gradient accumulation, one big batch). Launched by `costlab.distributed.launch`:

    distributed.launch("costlab.lessons.ddp_worker:run", nproc=2, accum=2)

Every rank returns its measurements; the notebook turns them into throughput, scaling
efficiency, communication share and cost per sample.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import meter, rank
from .rank_job import (build_classifier, compare_params, fingerprint, global_batches, loss_of,
                       rank_header, shard, sizes, to_device, train_encoded)


def accumulate(model, micro_batches: list[dict]) -> None:
    """Gradient accumulation: sum the gradients of k micro-batches, each loss divided by k, so the
    sum equals the gradient of one batch of all of them. Under DDP the gradients are all-reduced
    only on the last micro-batch (`no_sync` before): one communication per optimizer step."""
    k = len(micro_batches)
    for i, batch in enumerate(micro_batches):
        last = i == k - 1
        with (model.no_sync() if isinstance(model, DDP) and not last else contextlib.nullcontext()):
            (loss_of(model, batch) / k).backward()


def optimizer_step(model, optimizer, micro_batches: list[dict]) -> None:
    accumulate(model, micro_batches)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def run(*, model: str | None = None, layers: int | None = None, seq_len: int | None = None,
        batch_size: int | None = None, n_train: int | None = None, warmup: int | None = None,
        rounds: int | None = None, accum: int = 2, lr: float = 1e-4, seed: int = 0,
        profile: str | None = None) -> dict:
    """One rank of the job. batch_size is per rank; the global batch is world_size x batch_size.

    On 1 rank it also measures gradient accumulation over `accum` micro-batches and one batch of
    accum x batch_size, and checks that the two give the same update. On N > 1 ranks it checks
    that DDP gives the update of one batch of N x batch_size, and measures how much of a step is
    communication (a backward with DDP's all-reduce vs the same backward under `no_sync`).
    """
    ctx = rank.context()
    n = ctx.world_size
    z = sizes(profile, layers=layers, seq_len=seq_len, batch_size=batch_size, n_train=n_train,
              warmup=warmup, rounds=rounds)
    b = z["batch_size"]
    net, tokenizer = build_classifier(model=model, layers=z["layers"], seed=seed, device=ctx.device)
    encoded = train_encoded(tokenizer, n_train=z["n_train"], seq_len=z["seq_len"])
    reference = copy.deepcopy(net)  # one process, one big batch: what every variant must equal
    ddp = DDP(net, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=lr)
    out = {**rank_header(ctx), "batch_size": b, "n_params": sum(p.numel() for p in net.parameters()),
           "param_bytes": sum(p.numel() * p.element_size() for p in net.parameters())}
    # 1. The same update, two ways, from the same initial weights and the same k*b examples.
    k = accum if n == 1 else n
    first = to_device(next(global_batches(encoded, k * b, seed)), ctx.device)
    out["equivalence"] = _same_update(ddp, optimizer, reference, first, k, lr, ctx)
    del reference
    # 2. Timed steps, kinds taken in turns; each rank takes its share of a global batch of n*b.
    stream = global_batches(encoded, n * b, seed + 1)
    mine = lambda: to_device(shard(next(stream), ctx.rank, n), ctx.device)  # noqa: E731
    big = global_batches(encoded, accum * b, seed + 2)
    whole = lambda: to_device(next(big), ctx.device)  # noqa: E731
    # One step of each kind per round, in turns; every rank runs the same sequence, so the
    # collectives stay matched across ranks.
    timings = meter.time_interleaved(_step_kinds(ddp, optimizer, mine, whole, accum, n),
                                     warmup=z["warmup"], repeats=1, rounds=z["rounds"])
    out["step_time_sec"] = {name: t.median_sec for name, t in timings.items()}
    out["step_samples_sec"] = {name: list(t.samples_sec) for name, t in timings.items()}
    out["fingerprint"] = fingerprint(net)
    # 3. Memory an accumulation micro-batch keeps for backward vs one big batch (per rank).
    out["activation_bytes"] = {"micro_batch": _saved_bytes(net, mine())}
    if n == 1:
        out["activation_bytes"]["one_batch"] = _saved_bytes(net, whole())
    else:  # the all-reduce alone, at the gradients' size: the prediction's input
        grads = torch.zeros(out["n_params"], device=ctx.device)
        out["allreduce_sec"] = meter.time_fn(lambda: dist.all_reduce(grads), warmup=1,
                                             repeats=z["rounds"]).median_sec
    return out


def _same_update(ddp, optimizer, reference, batch: dict, k: int, lr: float, ctx) -> dict:
    """One optimizer step on `batch` by the reference (one process, one batch) and by the job:
    on 1 rank as k accumulated micro-batches, on N ranks as DDP with a slice each."""
    optimizer_step(reference, torch.optim.AdamW(reference.parameters(), lr=lr), [batch])
    if ctx.world_size == 1:
        optimizer_step(ddp, optimizer, [shard(batch, i, k) for i in range(k)])
        return {"accumulation_vs_one_batch": compare_params(ddp.module, reference), "k": k}
    optimizer_step(ddp, optimizer, [shard(batch, ctx.rank, ctx.world_size)])
    return {"ddp_vs_one_batch": compare_params(ddp.module, reference), "k": k}


def _step_kinds(ddp, optimizer, mine, whole, accum: int, n: int) -> dict:
    """The kinds of step to time. 1 rank: a step, accumulation over `accum` micro-batches, one
    batch of accum x b. N ranks: a step, and forward + backward with and without the all-reduce
    (no optimizer step there, so the ranks' weights never diverge): the difference is the
    communication a step waits for."""
    steps = {"step": lambda: optimizer_step(ddp, optimizer, [mine()])}
    if n == 1:
        steps["accumulation"] = lambda: optimizer_step(ddp, optimizer, [mine() for _ in range(accum)])
        steps["one_batch"] = lambda: optimizer_step(ddp, optimizer, [whole()])
    else:
        steps["backward_synced"] = lambda: _backward(ddp, mine(), sync=True)
        steps["backward_no_sync"] = lambda: _backward(ddp, mine(), sync=False)
    return steps


def _saved_bytes(net, batch: dict) -> int:
    """Bytes one forward pass on `batch` keeps for backward (weights excluded)."""
    return meter.saved_tensor_bytes(lambda: loss_of(net, batch))


def _backward(ddp, batch: dict, *, sync: bool) -> None:
    with (contextlib.nullcontext() if sync else ddp.no_sync()):
        loss_of(ddp, batch).backward()
    ddp.zero_grad(set_to_none=True)
