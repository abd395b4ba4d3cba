"""Count the collectives a rank issues, with their sizes, so that DDP, FSDP and tensor
parallelism are compared by what they actually moved, not by a formula:

    with collectives.Counter() as comm:
        train_step()
    comm.summary()  # {"all_reduce": {"calls": 1, "full_bytes": ..., "sent_bytes": ...}, ...}

A `TorchDispatchMode` sees each c10d collective as an operator call: DDP's bucketed all-reduce
(issued from backward hooks), FSDP2's all-gathers and reduce-scatters, DTensor's functional
all-reduce. Checked on CPU with gloo, where backward runs on the calling thread. Not yet run on
GPUs, where autograd runs backward on a device thread: that the mode reaches it there is unchecked.

full_bytes: the size of the whole tensor the collective produces or reduces (an all-gather's
output, a reduce-scatter's input). sent_bytes: what one rank sends for it with the ring
algorithm (Patarasuk & Yuan 2009): (N-1)/N x full for an all-gather or a reduce-scatter,
2(N-1)/N x full for an all-reduce (a reduce-scatter, then an all-gather).
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

# operator name -> (kind, index of the argument whose size is the full tensor, x group size)
_OPS = {
    "allreduce_": ("all_reduce", 0, 1), "allreduce_coalesced_": ("all_reduce", 0, 1),
    "all_reduce": ("all_reduce", 0, 1), "all_reduce_coalesced": ("all_reduce", 0, 1),
    "_allgather_base_": ("all_gather", 0, 1), "allgather_": ("all_gather", 0, 1),
    "allgather_into_tensor_coalesced_": ("all_gather", 0, 1),
    "all_gather_into_tensor": ("all_gather", 0, "N"),
    "all_gather_into_tensor_coalesced": ("all_gather", 0, "N"),
    "_reduce_scatter_base_": ("reduce_scatter", 1, 1), "reduce_scatter_": ("reduce_scatter", 1, 1),
    "reduce_scatter_tensor_coalesced_": ("reduce_scatter", 1, 1),
    "reduce_scatter_tensor": ("reduce_scatter", 0, 1),
    "reduce_scatter_tensor_coalesced": ("reduce_scatter", 0, 1),
    "broadcast_": ("broadcast", 0, 1), "broadcast": ("broadcast", 0, 1),
}
_NAMESPACES = {"c10d", "_c10d_functional", "c10d_functional"}
# What one rank sends per byte of the full tensor, with ring collectives on N ranks.
_RING = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: (n - 1) / n,
         "reduce_scatter": lambda n: (n - 1) / n, "broadcast": lambda n: 1.0}


def nbytes(value) -> int:
    """Bytes of a tensor, or of every tensor in a (nested) list of them."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (list, tuple)):
        return sum(nbytes(v) for v in value)
    return 0


class Counter(TorchDispatchMode):
    """Records (kind, full bytes) of every collective issued while it is active."""

    def __init__(self, world_size: int | None = None):
        super().__init__()
        self.world_size = world_size or (dist.get_world_size() if dist.is_initialized() else 1)
        self.calls: list[tuple[str, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.namespace in _NAMESPACES and name in _OPS:
            kind, arg, times = _OPS[name]
            full = nbytes(args[arg]) * (self.world_size if times == "N" else 1)
            self.calls.append((kind, full))
        return func(*args, **(kwargs or {}))

    def summary(self) -> dict[str, dict[str, float]]:
        """Per kind: calls, full bytes and ring bytes sent by this rank; plus a "total" row."""
        out: dict[str, dict[str, float]] = {}
        for kind, full in self.calls:
            row = out.setdefault(kind, {"calls": 0, "full_bytes": 0, "sent_bytes": 0.0})
            row["calls"] += 1
            row["full_bytes"] += full
            row["sent_bytes"] += _RING[kind](self.world_size) * full
        out["total"] = {key: sum(r[key] for r in out.values())
                        for key in ("calls", "full_bytes", "sent_bytes")}
        return out
