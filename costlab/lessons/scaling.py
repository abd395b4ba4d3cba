"""The arithmetic of parallel training: scaling efficiency, cost per sample, a right-sizing rule,
the ZeRO bytes-per-rank formulas and the bytes each strategy moves per step.

Pure functions of measured (or counted) numbers, so they are tested without launching anything.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import hardware


def efficiency(throughput: float, throughput_one: float, world_size: int) -> float:
    """Throughput of N workers over N times one worker's: 1.0 is perfect linear scaling."""
    return throughput / (world_size * throughput_one)


def device_price_usd_per_hour(kind: str | None = None) -> float | None:
    """The price of ONE device a rank rents: one GPU, or one CPU core (kind "cpu", also on a
    GPU machine whose ranks run on its CPU)."""
    device = hardware.detect()
    if kind == "cpu" and device.kind != "cpu":
        device = dataclasses.replace(device, kind="cpu", table_key="cpu-core")
    return hardware.price_usd_per_hour(dataclasses.replace(device, count=1))


def cost_per_sample(step_time_sec: float, samples_per_step: int, devices: int,
                    usd_per_device_hour: float | None) -> float | None:
    """USD per training sample: every device of the job is paid for the whole step."""
    if usd_per_device_hour is None:
        return None
    return devices * usd_per_device_hour * step_time_sec / 3600 / samples_per_step


@dataclass(frozen=True)
class RightSize:
    cheapest: int  # the world size that costs least (per sample, or to the target)
    recommended: int  # the largest world size whose cost premium stays within the limit
    max_premium: float  # the limit: cost at most this times the cheapest's
    rows: list[dict]  # per world size: what the cost is made of, premium, pays

    def frame(self):
        import pandas as pd

        return pd.DataFrame(self.rows).set_index("world_size")


def right_size(throughput: dict[int, float], usd_per_device_hour: float, *,
               max_premium: float = 1.25) -> RightSize:
    """Pick a world size from measured throughputs {world size: samples/s}.

    Samples per dollar peak where efficiency peaks (usually 1 worker, since efficiency <= 1):
    more workers buy wall-clock time at a premium of 1/efficiency. The rule: grow while each
    size still costs at most `max_premium` times the cheapest per sample; beyond, it stops
    paying. (1.25 = efficiency >= 0.8 against the cheapest.)
    """
    if 1 not in throughput:
        raise ValueError("right_size needs the 1-worker throughput as the reference")
    if max_premium < 1:
        raise ValueError("max_premium must be >= 1")
    cost = {n: n * usd_per_device_hour / 3600 / t for n, t in throughput.items()}
    cheapest = min(cost, key=cost.get)
    rows = []
    for n in sorted(throughput):
        premium = cost[n] / cost[cheapest]
        rows.append({"world_size": n, "throughput_samples_per_sec": throughput[n],
                     "scaling_efficiency": efficiency(throughput[n], throughput[1], n),
                     "cost_usd_per_sample": cost[n], "samples_per_usd": 1 / cost[n],
                     "premium_x": premium, "pays": premium <= max_premium})
    paying = [r["world_size"] for r in rows if r["pays"]]
    return RightSize(cheapest, max(paying), max_premium, rows)


def project_step_time(step_sec: float, comm_sec: float, measured_world: int, world_size: int) -> float:
    """A step on `world_size` workers estimated from a job measured on `measured_world`: its
    compute stays, its exposed communication scales as a ring all-reduce's 2(N-1)/N. For sizes
    the machine cannot run; an estimate, never a measurement."""
    ring = lambda n: 2 * (n - 1) / n  # noqa: E731  (bytes each rank sends, per gradient byte)
    return (step_sec - comm_sec) + comm_sec * ring(world_size) / ring(measured_world)


def right_size_to_target(samples_to_target: dict[int, float], step_time_sec: dict[int, float],
                         batch_per_worker: int, usd_per_device_hour: float, *,
                         max_premium: float = 1.25) -> RightSize:
    """Pick a world size by what it costs to reach a quality target, not what a sample costs.

    samples_to_target: {N: samples the job needs to reach the target at a global batch of
    N x batch_per_worker} (math.inf where it never did); step_time_sec: {N: seconds per step on
    N workers}. Cost to target(N) = N devices x price x steps to target x step time. Below the
    critical batch size the samples stay flat and this is right_size's answer; past it the
    samples grow with N, and so does the cost. The same limit as right_size: grow while the
    cost stays within max_premium times the cheapest.
    """
    if max_premium < 1:
        raise ValueError("max_premium must be >= 1")
    if set(samples_to_target) != set(step_time_sec):
        raise ValueError("samples_to_target and step_time_sec need the same world sizes")
    rows = []
    for n in sorted(samples_to_target):
        batch, step, samples = n * batch_per_worker, step_time_sec[n], samples_to_target[n]
        seconds = samples / batch * step
        rows.append({"world_size": n, "global_batch": batch, "samples_to_target": samples,
                     "steps_to_target": samples / batch, "step_time_sec": step,
                     "seconds_to_target": seconds,
                     "cost_usd_per_sample": cost_per_sample(step, batch, n, usd_per_device_hour),
                     "cost_usd": n * usd_per_device_hour * seconds / 3600})
    best = min(rows, key=lambda r: r["cost_usd"])
    if best["cost_usd"] == float("inf"):
        raise ValueError("no world size reached the target: raise the budget or lower the target")
    for r in rows:
        r["premium_x"] = r["cost_usd"] / best["cost_usd"]
        r["pays"] = r["premium_x"] <= max_premium
    return RightSize(best["world_size"], max(r["world_size"] for r in rows if r["pays"]), max_premium, rows)


def ddp_variants(one: dict, runs: dict[int, list[dict]], usd_per_device_hour: float | None) -> dict[str, dict]:
    """Vocabulary metrics of every variant of 10_data_parallelism, from the ranks' results.

    one: the 1-rank result of the notebook's worker script (plain, accumulation, one big batch);
    runs: {world size: [each rank's result]}. A DDP step is as slow as its slowest rank.
    """
    b, k = one["batch_size"], one["equivalence"]["k"]
    t, act = one["step_time_sec"], one["activation_bytes"]

    def row(step: float, samples: int, devices: int, activation: int, **more) -> dict:
        return {"step_time_sec": step, "throughput_samples_per_sec": samples / step,
                "cost_usd_per_sample": cost_per_sample(step, samples, devices, usd_per_device_hour),
                "activation_bytes": activation, **more}

    out = {"1_worker": row(t["step"], b, 1, act["micro_batch"], scaling_efficiency=1.0),
           f"grad_accum_x{k}": row(t["accumulation"], k * b, 1, act["micro_batch"]),
           f"one_batch_x{k}": row(t["one_batch"], k * b, 1, act["one_batch"])}
    for n, ranks in sorted(runs.items()):
        step = max(r["step_time_sec"]["step"] for r in ranks)
        synced = sum(r["step_time_sec"]["backward_synced"] for r in ranks) / n
        alone = sum(r["step_time_sec"]["backward_no_sync"] for r in ranks) / n
        out[f"ddp_{n}_workers"] = row(
            step, n * b, n, max(r["activation_bytes"]["micro_batch"] for r in ranks),
            scaling_efficiency=efficiency(n * b / step, b / t["step"], n),
            comm_fraction=max(0.0, synced - alone) / step)
    return out


# ---------------------------------------------------------------- ZeRO and communication volume

STAGES = {0: "DDP (replicated)", 1: "ZeRO-1: optimizer states sharded",
          2: "ZeRO-2: + gradients sharded", 3: "ZeRO-3 / FSDP: + parameters sharded"}


def zero_bytes_per_rank(n_params: int, world_size: int, stage: int, *, param_bytes: int = 4,
                        grad_bytes: int = 4, optimizer_bytes: int = 8) -> dict[str, float]:
    """Bytes of parameters, gradients and optimizer states held by one rank (Rajbhandari et al.).

    Defaults: fp32 training with AdamW (two fp32 moments = 8 bytes per parameter). Mixed-precision
    Adam is param_bytes=2, grad_bytes=2, optimizer_bytes=12 (fp32 master copy + moments): 16 per
    parameter, the ZeRO paper's figure. Stage s shards the first s of (optimizer, grads, params).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {list(STAGES)}")
    n = world_size
    per = {"params": n_params * param_bytes, "grads": n_params * grad_bytes,
           "optimizer": n_params * optimizer_bytes}
    sharded = {"optimizer": stage >= 1, "grads": stage >= 2, "params": stage >= 3}
    return {k: v / n if sharded[k] else float(v) for k, v in per.items()}


def bytes_moved_per_rank(strategy: str, param_bytes: float, world_size: int, *,
                         gathered_once: float = 0.0) -> float:
    """Bytes each rank sends per step with ring collectives (receives the same).

    DDP: one all-reduce of the gradients = reduce-scatter + all-gather, 2(N-1)/N x the bytes.
    FSDP: all-gather the parameters in forward and again in backward, reduce-scatter the
    gradients: 3(N-1)/N x the bytes, 1.5x DDP's traffic. gathered_once: the share of parameters
    kept gathered from forward to backward (FSDP2's root module), gathered once, not twice.
    """
    share = (world_size - 1) / world_size
    rounds = {"ddp": 2.0, "fsdp": 3.0 - gathered_once}
    if strategy not in rounds:
        raise ValueError(f"strategy must be one of {list(rounds)}")
    return rounds[strategy] * share * param_bytes


def shard_variants(jobs: dict[str, list[dict]], usd_per_device_hour: float | None) -> dict[str, dict]:
    """Vocabulary metrics of each strategy from its job's rank results ({"ddp": [...], "fsdp": [...]},
    as 11's DDP and FSDP scripts return them).

    Bytes are per rank, the largest rank's (the one that must fit); a step is as slow as its
    slowest rank; comm_bytes_per_step: what the busiest rank sent, counted from its collectives.
    """
    out = {}
    for strategy, ranks in jobs.items():
        n, b = len(ranks), ranks[0]["batch_size"]
        held = [r["held_bytes"] for r in ranks]
        step = max(r["step_time_sec"] for r in ranks)
        out[strategy] = {
            "model_size_bytes": max(h["params"] for h in held),
            "grad_bytes": max(h["grads"] for h in held),
            "optimizer_state_bytes": max(h["optimizer"] for h in held),
            "comm_bytes_per_step": max(r["collectives"]["total"]["sent_bytes"] for r in ranks),
            "step_time_sec": step, "throughput_samples_per_sec": n * b / step,
            "cost_usd_per_sample": cost_per_sample(step, n * b, n, usd_per_device_hour)}
    return out
