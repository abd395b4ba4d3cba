"""Measuring: one timing primitive, FLOPs, bytes saved for backward, peak memory, energy, $ and CO2.

- Time: warm up, synchronize, time with perf_counter, report the median.
- FLOPs: counted by torch's FlopCounterMode (exact, hardware-independent).
- Memory: on CUDA the allocator's peak (reset per variant); on CPU the bytes saved for backward
  and the peak RSS of a fresh process (`costlab.isolate`), net of its RSS before the model is
  built. tracemalloc cannot see torch's allocator, so it is never used.
- Energy: NVML's energy counter on NVIDIA GPUs; elsewhere power table x seconds, labelled
  estimated. $ = seconds x price table; CO2 = energy x grid intensity.
"""
from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import hardware


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Timing:
    median_sec: float
    samples_sec: tuple[float, ...]
    warmup_sec: tuple[float, ...]  # the discarded first calls, kept to show the warm-up trap


def time_fn(fn: Callable[[], object], *, warmup: int = 1, repeats: int = 5, sync: bool = True) -> Timing:
    """The kit's one timing primitive: `warmup` calls discarded, then the median of `repeats`."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    def once() -> float:
        if sync:
            synchronize()
        start = time.perf_counter()
        fn()
        if sync:
            synchronize()
        return time.perf_counter() - start
    warm = tuple(once() for _ in range(warmup))
    samples = tuple(once() for _ in range(repeats))
    return Timing(statistics.median(samples), samples, warm)


def time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int = 1, repeats: int = 3,
                     rounds: int = 3, sync: bool = True) -> dict[str, Timing]:
    """`time_fn` for several variants, taken in turns: round 1 times each variant, round 2
    again, ... On a shared machine the load changes by the second; interleaving makes every
    variant see the same load, so their ratio survives where back-to-back medians would not.
    Each variant's warm-up runs once, before the first round; its samples pool all rounds."""
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    warm = {name: time_fn(fn, warmup=0, repeats=warmup, sync=sync).samples_sec if warmup else ()
            for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name] += time_fn(fn, warmup=0, repeats=repeats, sync=sync).samples_sec
    return {name: Timing(statistics.median(s), tuple(s), warm[name]) for name, s in samples.items()}


# Batch keys that are targets, not model inputs: an inference call leaves them out.
NOT_MODEL_INPUTS = ("labels", "teacher_logits")


@torch.no_grad()
def inference_latencies(calls: dict[str, tuple[torch.nn.Module, dict]], *, warmup: int = 1,
                        repeats: int = 3, rounds: int = 3) -> dict[str, Timing]:
    """Time one forward pass of each model on its batch (eval mode, no autograd), the models timed
    in turns (`time_interleaved`) so that a shared machine's load hits them alike."""
    fns = {}
    for name, (model, batch) in calls.items():
        model.eval()
        inputs = {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}
        fns[name] = lambda m=model, x=inputs: m(**x)
    return time_interleaved(fns, warmup=warmup, repeats=repeats, rounds=rounds)


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call (forward and, if fn calls backward, backward), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes autograd keeps for backward while `fn` runs its forward pass (each storage once).

    Call it with a function that runs the forward pass only (and returns the loss); parameters
    saved for backward are excluded since they exist anyway.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor):
        # F.linear saves `weight.t()`: a plain-tensor view whose base is the Parameter.
        if isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter):
            return t
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    del result
    return sum(storages.values())


def tensors_bytes(tensors) -> int:
    """Bytes of these tensors, each counted once: bitsandbytes' 8-bit optimizers hand every
    parameter's state the same quantization-map tensors, which exist once in memory."""
    seen, total = set(), 0
    for t in tensors:
        if t is None:
            continue
        key = (t.data_ptr(), t.numel(), t.dtype) if t.numel() else (id(t),)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
    """Measured bytes of weights, gradients and optimizer states (what the estimate predicts)."""
    opt = 0
    if optimizer is not None:
        opt = tensors_bytes(v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v))
    return {"weights": tensors_bytes(model.parameters()),
            "grads": tensors_bytes(p.grad for p in model.parameters()),
            "optimizer": opt}


def _status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss_bytes() -> int | None:
    """Resident memory of this process now (Linux)."""
    return _status_kib("VmRSS")


def peak_rss_bytes() -> int | None:
    """Highest resident memory of this process so far (Linux VmHWM)."""
    return _status_kib("VmHWM")


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def nvml_handles(nvml, devices=None) -> list:
    """NVML handles of the GPUs with these CUDA ordinals (default: all CUDA sees). NVML numbers
    every GPU of the machine and ignores CUDA_VISIBLE_DEVICES; CUDA numbers the visible ones
    only, so a job's cuda:0 may be NVML's GPU 3: map the ordinals through the variable (indices
    or UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = ([v.strip() for v in visible.split(",") if v.strip()] if visible is not None
           else [str(i) for i in range(nvml.nvmlDeviceGetCount())])
    chosen = ids if devices is None else [ids[i] for i in devices]
    return [nvml.nvmlDeviceGetHandleByUUID(i) if not i.isdigit() else nvml.nvmlDeviceGetHandleByIndex(int(i))
            for i in chosen]


class EnergyCounter:
    """NVML's cumulative energy counters (mJ), summed over the GPUs a job uses: a job on N GPUs
    (DDP, FSDP) spends energy on all of them. devices: the job's CUDA ordinals (default: every
    GPU CUDA sees). `None` where they cannot be read. Not yet run on a GPU machine: tested
    against a stand-in for NVML."""

    def __init__(self, nvml=None, devices=None) -> None:
        self._nvml, self._handles = None, []
        if nvml is None and not torch.cuda.is_available():
            return
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            handles = nvml_handles(nvml, devices)
            for handle in handles:
                nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self._nvml, self._handles = nvml, handles
        except Exception:  # no NVML, or a GPU without the counter (pre-Volta, a MIG slice)
            self._nvml, self._handles = None, []

    @property
    def gpus(self) -> int:
        return len(self._handles)

    def read_j(self) -> float | None:
        if not self._handles:
            return None
        return sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles) / 1000.0


def price(seconds: float, energy_j: float | None = None,
          device: hardware.Device | None = None) -> tuple[dict[str, float | None], list[str]]:
    """Energy, $ and CO2 for `seconds` on `device`; returns (values, names that are estimates).

    Energy is estimated from the power table when no meter reading is given. The price and the
    grid intensity are table values either way: the $ and CO2 are labelled estimated too.
    """
    device = device or hardware.detect()
    estimated: list[str] = []
    if energy_j is None:
        watts = hardware.power_w(device)
        energy_j = None if watts is None else watts * seconds
        estimated.append("energy_j")
    per_hour = hardware.price_usd_per_hour(device)
    cost = None if per_hour is None else per_hour * seconds / 3600
    co2 = None if energy_j is None else energy_j / 3.6e6 * hardware.grid_g_per_kwh()
    estimated += ["cost_usd", "co2_g"]
    values = {"energy_j": energy_j, "cost_usd": cost, "co2_g": co2}
    return values, [name for name in estimated if values[name] is not None]


@dataclass(frozen=True)
class Measurement:
    """One variant's measured cost; field names (and units) from the metric vocabulary."""
    wall_sec: float
    cpu_sec: float
    peak_mem_bytes: int | None
    energy_j: float | None
    cost_usd: float | None
    co2_g: float | None
    step_time_sec: float | None = None
    flops: int | None = None
    activation_bytes: int | None = None
    estimated: tuple[str, ...] = field(default_factory=tuple)
    peak_mem_kind: str = ""  # "cuda_allocator_peak" or "process_peak_rss_net"

    def metrics(self) -> dict[str, float]:
        """The vocabulary metrics, unmeasured ones dropped: ready for `ledger.record`."""
        skip = {"estimated", "peak_mem_kind"}
        return {k: v for k, v in asdict(self).items() if k not in skip and v is not None}


class Meter:
    """`with Meter() as m: ...` then `m.result` is a Measurement of the block.

    Peak memory: CUDA allocator peak (reset on entry) or, on CPU, this process's peak RSS above
    its RSS on entry (reset on entry where the kernel allows; a fresh process is fairer:
    see `costlab.isolate`).
    """

    def __init__(self, *, step_time_sec: float | None = None, flops: int | None = None,
                 activation_bytes: int | None = None):
        self._extra = {"step_time_sec": step_time_sec, "flops": flops, "activation_bytes": activation_bytes}
        self.result: Measurement | None = None

    def __enter__(self) -> "Meter":
        self._device = hardware.detect()
        self._energy = EnergyCounter()
        synchronize()
        if self._device.kind == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self._mem_start = torch.cuda.memory_allocated()
        else:
            # Collect cyclic garbage first: freed mid-measurement (a gc pass triggered by the
            # measured code), it would lower the RSS under the start line and hide the peak.
            gc.collect()
            reset_peak_rss()
            self._mem_start = rss_bytes()
        self._e0 = self._energy.read_j()
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        return self

    def set(self, **values) -> None:
        """Add step_time_sec / flops / activation_bytes measured inside the block."""
        unknown = set(values) - set(self._extra)
        if unknown:
            raise KeyError(f"meter.set takes {sorted(self._extra)}, not {sorted(unknown)}")
        self._extra.update(values)

    def __exit__(self, *exc) -> None:
        synchronize()
        wall, cpu = time.perf_counter() - self._t0, time.process_time() - self._c0
        e1 = self._energy.read_j()
        energy = None if e1 is None or self._e0 is None else e1 - self._e0
        if self._device.kind == "cuda":
            peak, kind = torch.cuda.max_memory_allocated(), "cuda_allocator_peak"
        else:
            hwm = peak_rss_bytes()
            peak = None if hwm is None or self._mem_start is None else hwm - self._mem_start
            kind = "process_peak_rss_net"
        values, estimated = price(wall, energy, self._device)
        self.result = Measurement(wall_sec=wall, cpu_sec=cpu, peak_mem_bytes=peak,
                                  estimated=tuple(estimated), peak_mem_kind=kind,
                                  **values, **self._extra)
