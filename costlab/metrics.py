"""The one vocabulary of result names: unit and which direction is better, declared once.

Every ledger line, table and plot takes names and directions from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class MetricSpec:
    unit: str
    lower_is_better: bool
    label: str


COST_METRICS: dict[str, MetricSpec] = {
    "step_time_sec": MetricSpec("s", True, "median step time"),
    "wall_sec": MetricSpec("s", True, "wall time"),
    "cpu_sec": MetricSpec("s", True, "CPU time"),
    "compile_sec": MetricSpec("s", True, "compile time"),
    "peak_mem_bytes": MetricSpec("B", True, "peak memory"),
    "activation_bytes": MetricSpec("B", True, "bytes saved for backward"),
    "grad_bytes": MetricSpec("B", True, "gradient bytes"),
    "optimizer_state_bytes": MetricSpec("B", True, "optimizer state bytes"),
    "model_size_bytes": MetricSpec("B", True, "model bytes"),
    "checkpoint_bytes": MetricSpec("B", True, "checkpoint bytes"),
    "flops": MetricSpec("FLOP", True, "FLOPs"),
    "trainable_params": MetricSpec("params", True, "trainable parameters"),
    "total_params": MetricSpec("params", True, "total parameters"),
    "throughput_samples_per_sec": MetricSpec("samples/s", False, "throughput"),
    "steps_to_target": MetricSpec("steps", True, "steps to target"),
    "samples_to_target": MetricSpec("samples", True, "training samples to target"),
    "flops_to_target": MetricSpec("FLOP", True, "FLOPs to target"),
    "seconds_to_target": MetricSpec("s", True, "training seconds to target"),
    "energy_j": MetricSpec("J", True, "energy"),
    "cost_usd": MetricSpec("USD", True, "cost"),
    "co2_g": MetricSpec("g", True, "CO2"),
    "busy_fraction": MetricSpec("fraction", False, "trainer busy fraction"),
    "latency_ms": MetricSpec("ms", True, "latency"),
    # Parallel training (10, 11): what one sample costs with every device of the job paid for,
    # how much of N workers' throughput is real (1.0 = linear), and the share of a step spent
    # waiting on communication.
    "cost_usd_per_sample": MetricSpec("USD/sample", True, "cost per sample"),
    "scaling_efficiency": MetricSpec("fraction", False, "scaling efficiency"),
    "comm_fraction": MetricSpec("fraction", True, "communication share of a step"),
    "comm_bytes_per_step": MetricSpec("B", True, "bytes each rank sends per step"),
}

QUALITY_METRICS: dict[str, MetricSpec] = {
    "accuracy": MetricSpec("fraction", False, "accuracy"),
    "eval_loss": MetricSpec("nats", True, "eval loss"),
    "perplexity": MetricSpec("", True, "perplexity"),
}


class UnknownMetric(KeyError):
    pass


def spec(name: str) -> MetricSpec:
    if name in COST_METRICS:
        return COST_METRICS[name]
    if name in QUALITY_METRICS:
        return QUALITY_METRICS[name]
    raise UnknownMetric(
        f"{name!r} is not in costlab's metric vocabulary (costlab/metrics.py); "
        f"known: {', '.join([*COST_METRICS, *QUALITY_METRICS])}"
    )


def lower_is_better(name: str) -> bool:
    return spec(name).lower_is_better


def improvement_ratio(name: str, before: float, after: float) -> float:
    """How many times better `after` is than `before` (>1 is better) in this metric's direction."""
    if lower_is_better(name):
        return float("inf") if after == 0 else before / after
    return float("inf") if before == 0 else after / before


def format_value(name: str, value: float | None) -> str:
    """Human units: bytes in MiB/GiB, FLOPs in G/T, seconds with sensible digits."""
    if value is None:
        return "n/a"
    if math.isinf(value):  # e.g. compute to a target that was never reached
        return "never" if value > 0 else "-inf"
    unit = spec(name).unit
    if unit == "B":
        for scale, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(value) >= scale:
                return f"{value / scale:.2f} {suffix}"
        return f"{value:.0f} B"
    if unit in ("FLOP", "params"):
        for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.2f}{suffix}" + (" FLOP" if unit == "FLOP" else "")
        return f"{value:.0f}"
    if unit == "s":
        return f"{value:.3g} s"
    return f"{value:.4g} {unit}".strip()
