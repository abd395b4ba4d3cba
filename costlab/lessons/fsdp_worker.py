"""The rank code of 11_model_parallelism: the same classifier trained with DDP (every rank holds
everything) and with FSDP2 `fully_shard` (every rank holds 1/N of parameters, gradients and
optimizer states), side by side in one job, steps taken in turns so both see the same load:

    distributed.launch("costlab.lessons.fsdp_worker:run", nproc=2)

Each rank returns the bytes it holds, measured from its own tensors (a DTensor's local shard),
its step times, the per-step loss of both, and the time of each strategy's collectives alone.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from .. import meter, models, rank
from .rank_job import (build_classifier, global_batches, loss_of, rank_header, shard, sizes,
                       to_device, train_encoded)


def shard_model(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2: shard each transformer block, then the rest (embeddings, head) at the root.

    A block's parameters are all-gathered just before it runs and freed after, so a rank holds
    the full weights of one block at a time, not of the model. Blocks are found from the model,
    not by family name, so any architecture works.
    """
    for block in models.transformer_blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model


def local(t: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this rank holds: a DTensor's local shard, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer states this rank holds, from its tensors."""
    def nbytes(tensors) -> int:
        return sum(local(t).numel() * local(t).element_size() for t in tensors if t is not None)

    params = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {"params": nbytes(params), "grads": nbytes(p.grad for p in params),
            "optimizer": nbytes(states)}


def collective_seconds(strategy: str, numel: int, root_numel: int, device: torch.device,
                       repeats: int) -> float:
    """Seconds of one step's collectives alone, at the model's sizes, with nothing to overlap.

    DDP all-reduces the gradients. FSDP2 all-gathers each block's parameters twice (forward,
    then backward, since it frees them after forward) and the root's (embeddings, head) once
    (the root keeps them from forward to backward), and reduce-scatters every gradient.
    """
    n = dist.get_world_size()

    def buffers(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        count -= count % n  # equal shards
        return torch.zeros(count, device=device), torch.zeros(count // n, device=device)

    full, part = buffers(numel)
    blocks, block_part = buffers(numel - root_numel)
    root, root_part = buffers(root_numel)
    if strategy == "ddp":
        def step():
            dist.all_reduce(full)
    else:
        def step():
            dist.all_gather_into_tensor(root, root_part)      # forward: root, then each block
            dist.all_gather_into_tensor(blocks, block_part)
            dist.all_gather_into_tensor(blocks, block_part)   # backward: the blocks again
            dist.reduce_scatter_tensor(part, full)            # every gradient, to its shard
    return meter.time_fn(step, warmup=1, repeats=repeats).median_sec


def run(*, model: str | None = None, layers: int | None = None, seq_len: int | None = None,
        batch_size: int | None = None, n_train: int | None = None, warmup: int | None = None,
        rounds: int | None = None, lr: float = 1e-4, seed: int = 0, profile: str | None = None) -> dict:
    """One rank: DDP and FSDP copies of the same initial model, trained on the same batches."""
    ctx = rank.context()
    z = sizes(profile, layers=layers, seq_len=seq_len, batch_size=batch_size, n_train=n_train,
              warmup=warmup, rounds=rounds)
    nets = {}
    for strategy in ("ddp", "fsdp"):
        net, tokenizer = build_classifier(model=model, layers=z["layers"], seed=seed, device=ctx.device)
        nets[strategy] = net
    n_params = sum(p.numel() for p in nets["ddp"].parameters())
    block_params = sum(p.numel() for b in models.transformer_blocks(nets["fsdp"]) for p in b.parameters())
    n_tensors = sum(1 for _ in nets["ddp"].parameters())
    ddp = DDP(nets["ddp"], device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    fsdp = shard_model(nets["fsdp"])
    wrapped = {"ddp": ddp, "fsdp": fsdp}
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=lr) for k, m in wrapped.items()}
    encoded = train_encoded(tokenizer, n_train=z["n_train"], seq_len=z["seq_len"])
    streams = {k: global_batches(encoded, ctx.world_size * z["batch_size"], seed) for k in wrapped}
    losses: dict[str, list[float]] = {k: [] for k in wrapped}
    held: dict[str, dict] = {}

    def step(strategy: str, measure: bool = False):
        model, opt = wrapped[strategy], optimizers[strategy]
        batch = to_device(shard(next(streams[strategy]), ctx.rank, ctx.world_size), ctx.device)
        loss = loss_of(model, batch)
        loss.backward()
        opt.step()
        if measure:  # grads still there, optimizer states exist after a step
            held[strategy] = held_bytes(model, opt)
        opt.zero_grad(set_to_none=True)
        losses[strategy].append(loss.detach())

    # In turns, the same sequence on every rank (so the collectives stay matched).
    timings = meter.time_interleaved({k: (lambda k=k: step(k)) for k in wrapped}, warmup=z["warmup"],
                                     repeats=1, rounds=z["rounds"])
    for strategy in wrapped:  # one more step each, untimed, to count the bytes held
        step(strategy, measure=True)
    out = {**rank_header(ctx), "n_params": n_params, "n_tensors": n_tensors,
           "root_params": n_params - block_params,
           "batch_size": z["batch_size"], "held_bytes": held,
           "step_time_sec": {k: t.median_sec for k, t in timings.items()},
           "step_samples_sec": {k: list(t.samples_sec) for k, t in timings.items()},
           "loss": {k: _global_mean(v) for k, v in losses.items()}}
    out["collective_sec"] = {k: collective_seconds(k, n_params, n_params - block_params, ctx.device,
                                                   z["rounds"]) for k in wrapped}
    return out


def _global_mean(values: list[torch.Tensor]) -> list[float]:
    """Each step's loss averaged over ranks (each rank saw a different slice of the batch)."""
    stacked = torch.stack(values).float()
    dist.all_reduce(stacked)
    return (stacked / dist.get_world_size()).tolist()
