"""What this machine is, and the tables that turn seconds into dollars, joules and CO2.

The tables are explicit and overridable: `set_price`, `set_power`, `set_grid_intensity`, or
the environment (`COSTLAB_PRICE_USD_PER_HOUR`, `COSTLAB_POWER_W`, `COSTLAB_GRID_G_PER_KWH`).
A device missing from a table gives `None`, never a guessed constant.
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" or "cpu"
    name: str  # e.g. "NVIDIA H100 80GB HBM3" or the CPU model
    memory_bytes: int | None  # accelerator memory, or the machine's RAM on CPU
    bf16_supported: bool
    count: int  # GPUs visible, or CPU cores available to this process
    table_key: str | None  # the row of the price/power/FLOP tables this device matches

    def to_dict(self) -> dict:
        return asdict(self)


# On-demand cloud list prices (USD/hour, single device, late 2026, rounded), power at full load
# (W, the vendor's TDP/TBP) and dense peak FLOP/s (bf16 tensor cores for GPUs; fp32 for a CPU
# core). Sources: vendor spec sheets and public price pages. Override them for your provider.
PRICE_USD_PER_HOUR: dict[str, float] = {
    "H200": 3.80, "H100": 2.90, "A100-80GB": 1.80, "A100": 1.30, "L40S": 1.00, "L4": 0.80,
    "A10G": 1.00, "T4": 0.40, "RTX 4090": 0.70, "cpu-core": 0.024,  # c7i-class vCPU pair / 2
}
POWER_W: dict[str, float] = {
    "H200": 700, "H100": 700, "A100-80GB": 400, "A100": 400, "L40S": 350, "L4": 72,
    "A10G": 150, "T4": 70, "RTX 4090": 450, "cpu-core": 10,  # server TDP / cores, e.g. 300 W / 32
}
PEAK_FLOPS: dict[str, float] = {
    "H200": 989e12, "H100": 989e12, "A100-80GB": 312e12, "A100": 312e12, "L40S": 362e12,
    "L4": 121e12, "A10G": 125e12, "T4": 65e12, "RTX 4090": 165e12,
}
# Dense fp32 peak FLOP/s of the same devices without TF32 (torch's default for fp32 matmuls is
# full precision), for plans that train without bf16 autocast. Vendor spec sheets.
PEAK_FLOPS_FP32: dict[str, float] = {
    "H200": 67e12, "H100": 67e12, "A100-80GB": 19.5e12, "A100": 19.5e12, "L40S": 91.6e12,
    "L4": 30.3e12, "A10G": 31.2e12, "T4": 8.1e12, "RTX 4090": 82.6e12,
}
# Accelerator memory (bytes, nominal) that a plan must fit in. T4s (Turing) have no bf16 units:
# PEAK_FLOPS holds their fp16 peak, and bf16 autocast there runs at fp32 speed at best.
MEMORY_BYTES: dict[str, float] = {
    "H200": 141e9, "H100": 80 * 2**30, "A100-80GB": 80 * 2**30, "A100": 40 * 2**30,
    "L40S": 48 * 2**30, "L4": 24 * 2**30, "A10G": 24 * 2**30, "T4": 16 * 2**30, "RTX 4090": 24 * 2**30,
}
NO_BF16: frozenset[str] = frozenset({"T4"})
# Grid carbon intensity (gCO2/kWh). 475 is the IEA's world average for 2023; set yours.
GRID_G_PER_KWH_DEFAULT = 475.0

_overrides: dict[str, dict[str, float]] = {"price": {}, "power": {}, "flops": {}, "flops_fp32": {}}
_grid: list[float] = []


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _table_key(kind: str, name: str) -> str | None:
    if kind == "cpu":
        return "cpu-core"
    upper = name.upper()
    if "A100" in upper and "80" in upper:
        return "A100-80GB"
    # Longest key first so that "A100-80GB" never matches as plain "A100".
    for key in sorted((k for k in PRICE_USD_PER_HOUR if k != "cpu-core"), key=len, reverse=True):
        if key.upper() in upper:
            return key
    return None


def detect() -> Device:
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Device("cuda", props.name, props.total_memory, torch.cuda.is_bf16_supported(),
                      torch.cuda.device_count(), _table_key("cuda", props.name))
    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    # bf16 autocast runs on any CPU, but fast only with AVX512-BF16/AMX; report the kernel support.
    bf16 = bool(getattr(torch.backends.mkldnn, "is_available", lambda: False)())
    name = _cpu_name()
    return Device("cpu", name, psutil.virtual_memory().total, bf16, cores or 1, _table_key("cpu", name))


def table_device(key: str) -> Device:
    """A device of the tables (one GPU, e.g. "H100"), for plans made before renting it."""
    if key not in PRICE_USD_PER_HOUR or key == "cpu-core":
        raise KeyError(f"no device {key!r} in the tables; choose one of "
                       f"{[k for k in PRICE_USD_PER_HOUR if k != 'cpu-core']}")
    memory = MEMORY_BYTES.get(key)
    return Device("cuda", key, None if memory is None else int(memory), key not in NO_BF16, 1, key)


def _lookup(table: dict[str, float], which: str, env: str, device: Device) -> float | None:
    if os.environ.get(env):
        return float(os.environ[env])
    key = device.table_key
    if key is None:
        return None
    value = _overrides[which].get(key, table.get(key))
    if value is not None and key == "cpu-core":
        return value * device.count  # the table holds one core; we pay for all we use
    return value


def price_usd_per_hour(device: Device | None = None) -> float | None:
    return _lookup(PRICE_USD_PER_HOUR, "price", "COSTLAB_PRICE_USD_PER_HOUR", device or detect())


def power_w(device: Device | None = None) -> float | None:
    return _lookup(POWER_W, "power", "COSTLAB_POWER_W", device or detect())


def peak_flops(device: Device | None = None) -> float | None:
    return _lookup(PEAK_FLOPS, "flops", "COSTLAB_PEAK_FLOPS", device or detect())


def peak_flops_fp32(device: Device | None = None) -> float | None:
    return _lookup(PEAK_FLOPS_FP32, "flops_fp32", "COSTLAB_PEAK_FLOPS_FP32", device or detect())


def grid_g_per_kwh() -> float:
    if os.environ.get("COSTLAB_GRID_G_PER_KWH"):
        return float(os.environ["COSTLAB_GRID_G_PER_KWH"])
    return _grid[-1] if _grid else GRID_G_PER_KWH_DEFAULT


def set_price(key: str, usd_per_hour: float) -> None:
    _overrides["price"][key] = usd_per_hour


def set_power(key: str, watts: float) -> None:
    _overrides["power"][key] = watts


def set_grid_intensity(g_per_kwh: float) -> None:
    _grid.append(g_per_kwh)


def training_device() -> torch.device:
    """Where the kit trains: the first CUDA GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def require_cuda(feature: str) -> None:
    """A clear error for a GPU-only switch used on a CPU machine."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"{feature} needs an NVIDIA GPU (CUDA), and this machine has none. "
            f"Run this part on a GPU machine, or switch it off for the CPU profiles."
        )


def device_record(device: Device | None = None) -> dict:
    """The device as stored on every ledger line: kind, name, count, memory."""
    d = device or detect()
    return {"kind": d.kind, "name": d.name, "count": d.count, "memory_bytes": d.memory_bytes}


# Instruction sets whose bf16 matrix kernels run faster than fp32 ones on a CPU (oneDNN uses them).
FAST_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's instruction-set flags from /proc/cpuinfo (e.g. avx512_bf16, amx_bf16); empty where unreadable."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    flags = set()
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.split(":", 1)[1].split())
    return flags
