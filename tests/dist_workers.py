"""Functions that tests run as torch.distributed ranks through costlab.distributed.launch."""
import os
import time

import torch
import torch.distributed as dist

from costlab import rank


def sum_ranks() -> dict:
    ctx = rank.context()
    value = torch.tensor([float(ctx.rank + 1)])
    dist.all_reduce(value)
    return {"rank": ctx.rank, "world_size": ctx.world_size, "sum": value.item(),
            "threads": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}


def rank_one_raises() -> dict:
    ctx = rank.context()
    if ctx.rank == 1:
        raise ValueError("rank one broke on purpose")
    dist.barrier()  # rank 0 waits here for a peer that never comes
    return {"rank": ctx.rank}


def rank_one_hangs() -> dict:
    ctx = rank.context()
    dist.barrier()  # both ranks are up
    if ctx.rank == 1:
        stuck_forever()
    dist.barrier()  # rank 0 waits here for rank 1
    return {"rank": ctx.rank}


def stuck_forever() -> None:
    while True:
        time.sleep(0.05)


def plain() -> dict:
    return {"pid": os.getpid(), "rank": rank.context().rank}


def tiny_task(seed: int = 0):
    """A small model and a fixed 'evaluation' for the background-evaluator tests."""
    from costlab.lessons.async_eval import Task

    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 2)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def evaluate(m) -> dict:
        return {"eval_loss": m(x).pow(2).mean().item()}

    return Task(model, evaluate)


def evaluator_then_hang() -> dict:
    """Start a background evaluator, then hang: the launcher's timeout must take both down."""
    from costlab.lessons.async_eval import BackgroundEvaluator

    evaluator = BackgroundEvaluator("tests.dist_workers:tiny_task", {})
    evaluator.wait_ready()
    print(f"evaluator pid {evaluator.pid}", flush=True)
    stuck_forever()
    return {}
