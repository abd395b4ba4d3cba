"""torch.compile, measured (notebook 05): compile seconds, eager vs compiled time after warm-up,
speed-up, and the break-even step count; outputs and gradients compared before any timing.
The `torch.compile` call itself is the notebook's; this module times and compares what it made.

Why fusion pays: eager PyTorch runs one kernel per operation, and each one reads its input from
memory and writes its output back. A chain of pointwise operations (bias, GELU, residual add,
LayerNorm) is limited by that memory traffic, not by arithmetic; TorchInductor fuses the chain
into one loop that reads the inputs once. A matmul is already one well-tuned BLAS call, so a
matmul-bound step has little left to fuse.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn

from .. import meter


@dataclass(frozen=True)
class CompileResult:
    """One eager-vs-compiled comparison; seconds are per call of the function timed."""
    name: str
    compile_sec: float  # the first compiled call, less one ordinary compiled call
    eager_sec: float  # median after warm-up
    compiled_sec: float  # median after warm-up
    outputs_match: bool  # allclose, checked before any timing
    max_abs_diff: float
    cache_hits: int  # Inductor FX-graph cache hits during the compile (>0: compiled before)

    @property
    def speedup(self) -> float:
        return self.eager_sec / self.compiled_sec

    @property
    def break_even_steps(self) -> float:
        """Calls after which compiling has paid for itself; inf when it never does."""
        return break_even_steps(self.compile_sec, self.eager_sec, self.compiled_sec)

    def row(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "break_even_steps": self.break_even_steps}


def break_even_steps(compile_sec: float, eager_sec: float, compiled_sec: float) -> float:
    """compile seconds / seconds saved per step; inf when compiled is not faster."""
    saved = eager_sec - compiled_sec
    return math.inf if saved <= 0 else max(compile_sec, 0.0) / saved


def _tensors(out) -> list[torch.Tensor]:
    """The tensors of an output: a tensor, a tuple, or a transformers ModelOutput."""
    if torch.is_tensor(out):
        return [out]
    if hasattr(out, "to_tuple"):
        out = out.to_tuple()
    return [t for t in out if torch.is_tensor(t)]


def outputs_close(a, b, *, rtol: float = 1e-4, atol: float = 1e-5) -> tuple[bool, float]:
    """allclose over every output tensor, and the largest absolute difference.

    The tolerance admits float reassociation only: a fused loop sums in another order than
    separate kernels, which moves fp32 results in their last digits, never more.
    """
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb):
        return False, math.inf
    ta, tb = [t.detach() for t in ta], [t.detach() for t in tb]
    diffs = [float((x.float() - y.float()).abs().max()) if x.numel() else 0.0 for x, y in zip(ta, tb)]
    close = all(x.shape == y.shape and torch.allclose(x.float(), y.float(), rtol=rtol, atol=atol)
                for x, y in zip(ta, tb))
    return close, max(diffs, default=0.0)


def cache_hits() -> int:
    """Inductor FX-graph cache hits so far in this process (a difference >0 around a compile: it
    reused kernels built before, so its seconds are not a cold compile)."""
    from torch._dynamo.utils import counters

    return int(counters["inductor"]["fxgraph_cache_hit"])


def eager_vs_compiled(name: str, fn: Callable, compiled: Callable, args: tuple = (), kwargs: dict | None = None,
                      *, warmup: int = 1, repeats: int = 5, rounds: int = 3, rtol: float = 1e-4,
                      atol: float = 1e-5) -> CompileResult:
    """Time `compiled` (what `torch.compile(fn)` returned, not yet called) against `fn`.

    Runs without autograd (inference). The first compiled call is timed on its own: it
    traces, lowers and builds C++/Triton kernels. Outputs are compared before any timing, and a
    mismatch raises: a faster wrong answer is not a speed-up. Then eager and compiled calls are
    timed in turns (`meter.time_interleaved`), warm-up excluded, medians.
    """
    kwargs = kwargs or {}
    with torch.no_grad():
        expected = fn(*args, **kwargs)
        hits = cache_hits()
        meter.synchronize()
        start = time.perf_counter()
        got = compiled(*args, **kwargs)
        meter.synchronize()
        first_sec = time.perf_counter() - start
        hits = cache_hits() - hits
        match, diff = outputs_close(expected, got, rtol=rtol, atol=atol)
        if not match:
            raise AssertionError(f"{name}: compiled output differs from eager (max |diff| {diff:.3g}); "
                                 f"not timing a wrong answer")
        times = meter.time_interleaved({"eager": lambda: fn(*args, **kwargs),
                                        "compiled": lambda: compiled(*args, **kwargs)},
                                       warmup=warmup, repeats=repeats, rounds=rounds)
    eager, comp = times["eager"].median_sec, times["compiled"].median_sec
    return CompileResult(name, first_sec - comp, eager, comp, match, diff, hits)


def grads_close(a: nn.Module, b: nn.Module, *, rtol: float = 1e-4, atol: float = 1e-5) -> tuple[bool, float]:
    """Two copies of a model after one backward pass: every parameter's gradient allclose, and
    the largest absolute difference (a parameter with a gradient on one side only fails)."""
    pairs = list(zip(a.parameters(), b.parameters(), strict=True))
    if any((x.grad is None) != (y.grad is None) for x, y in pairs):
        return False, math.inf
    pairs = [(x.grad, y.grad) for x, y in pairs if x.grad is not None]
    return outputs_close(tuple(x for x, _ in pairs), tuple(y for _, y in pairs), rtol=rtol, atol=atol)


def pointwise_inputs(rows: int, hidden: int, *, seed: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """A (rows x hidden) activation and its residual, as the block sees them in a model."""
    g = torch.Generator().manual_seed(seed)
    x, r = torch.randn(rows, hidden, generator=g), torch.randn(rows, hidden, generator=g)
    return x.to(device or "cpu"), r.to(device or "cpu")


# Full-tensor passes through memory (a read or a write of rows x hidden fp32 values) of the
# notebook's MLP tail: x + bias, GELU in its tanh form written as tensor ops (as GPT-2's code
# does), residual add, LayerNorm. Eager, one kernel per op: x + bias (read 1, write 1), pow (1, 1),
# 0.044715 * (1, 1), y + (2, 1), sqrt(2/pi) * (1, 1), tanh (1, 1), 1 + (1, 1), 0.5 * y (1, 1),
# * (2, 1), residual + (2, 1), LayerNorm (1, 1; its row statistics stay in cache): 14 reads,
# 11 writes. Fused: read x and the residual, write the output: 3 passes when a row is reduced in
# one go (Triton on GPU); where the statistics get their own loops, each reads both inputs again
# (one Welford loop: 5; a mean loop and a variance loop: 7), so the prediction is a range.
EAGER_PASSES = 25
FUSED_PASSES = {"one pass": 3, "statistics in separate passes": 7}


def bytes_moved(rows: int, hidden: int, passes: int = EAGER_PASSES) -> int:
    """Bytes read + written by `passes` full passes over a rows x hidden fp32 tensor."""
    return passes * rows * hidden * 4


# aten ops that run as BLAS/oneDNN/cuBLAS matmuls or fused attention kernels: what eager code
# already does well, and what the compiler hands to the same libraries.
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear", "aten::matmul",
              "aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_efficient_attention",
              "aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_cudnn_attention")


def matmul_share(fn: Callable[[], object], *, repeats: int = 3) -> float:
    """Share of eager time spent inside matmul and attention kernels, from torch.profiler.

    Amdahl's bound follows: if fusion made everything else free, the speed-up would be at most
    1 / share. (Self time, so a `linear` that calls `addmm` is not counted twice.) `fn` runs as
    given: wrap it in `torch.no_grad()` to profile inference, call backward in it to profile a step.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    fn()  # warm-up outside the profile
    with _quiet_fd2(), profile(activities=activities) as prof:
        for _ in range(repeats):
            fn()
        meter.synchronize()
    events = prof.key_averages()
    self_time = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    total = sum(self_time(e) for e in events)
    matmul = sum(self_time(e) for e in events if e.key in MATMUL_OPS)
    return matmul / total if total else 0.0


@contextlib.contextmanager
def _quiet_fd2():
    """Silence the process's stderr file descriptor for a moment: the profiler's C++ layer
    (kineto) writes two log lines per profile there, which no setting turns off."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
