"""The capstone (14): the cuts stacked one at a time on one causal-LM fine-tuning job. The notebook
writes each step as the previous job plus one change and runs it in a fresh process
(`isolate(workloads.lm_training, ...)`); this module holds what is not the cut: the job's sizes,
the estimator's plan for each step (`costlab.lessons.plans`, in the order of `plans.CUTS`), the
comparison of predicted with measured, and the team's question: the cheapest plan that fits a
memory budget and a quality bound.

A step is the previous step plus one cut, so each bar of the waterfall is one cut's effect *given
the cuts before it*: interactions (8-bit AdamW after LoRA has little left to shrink) show up as
measured, not assumed.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import hardware, models
from . import plans
from ..estimate import ModelShape

BASELINE = "baseline"


@dataclass(frozen=True)
class Job:
    """The fine-tuning job every step runs: sizes from the profile, a learning rate per method."""
    model: str
    layers: int | None
    seq_len: int
    batch_size: int
    steps: int
    eval_examples: int
    lr_full: float = 1e-3
    # Zero-initialised adapters on a frozen base take much larger steps than full fine-tuning;
    # the deeper the model, the smaller (the profile's stack_lora_lr).
    lr_lora: float = 3e-2
    lora_r: int = 8
    padding_share: float = 0.0  # of the padded training batches' positions (`padding_share_of`)

    @classmethod
    def from_profile(cls, p, model: str, **overrides) -> "Job":
        """The capstone's job at profile `p`'s sizes: 02's depth and learning rate for full
        fine-tuning (the whole model where the profile allows), the stack_* sizes."""
        # a number of blocks, always: lm_training reads layers=None as the profile's lm_layers
        depth = p.lora_layers if p.lora_layers is not None else models.depth(model)
        sizes = dict(layers=depth, seq_len=p.stack_seq_len, batch_size=p.stack_batch_size,
                     steps=p.stack_steps, eval_examples=p.stack_eval_examples, lr_full=p.full_lr,
                     lr_lora=p.stack_lora_lr)
        return cls(model=model, **{**sizes, **overrides})

    def sizes(self) -> dict:
        """`workloads.lm_training`'s size arguments (the same for every step)."""
        return {"model": self.model, "layers": self.layers, "seq_len": self.seq_len, "batch_size": self.batch_size,
                "steps": self.steps, "eval_examples": self.eval_examples, "measure_checkpoint": False}

    def plan(self, shape: ModelShape, cuts=()) -> plans.Plan:
        base = plans.Plan(shape, self.seq_len, self.batch_size, float(self.tokens), padding_share=self.padding_share)
        return plans.with_cuts(base, cuts, lora_r=self.lora_r)

    @property
    def tokens(self) -> int:
        """Real tokens the job trains on (padding excluded)."""
        return round(self.steps * self.seq_len * self.batch_size * (1 - self.padding_share))


def padding_share_of(job: Job, records) -> float:
    """The share of positions that are padding when `records` are padded to the job's seq_len."""
    from transformers import AutoTokenizer

    from .. import data

    tokenizer = AutoTokenizer.from_pretrained(models.resolve(job.model))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    mask = data.encode_lm(tokenizer, records, job.seq_len)["attention_mask"]
    return 1 - float(mask.float().mean())


def shape_of(name_or_path: str, layers: int | None) -> ModelShape:
    """The model's shape without loading weights: built on the meta device from its config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(models.resolve(name_or_path))
    if layers is not None:
        models.keep_config_layers(config, range(min(layers, config.num_hidden_layers)))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return ModelShape.from_model(model)


def qlora_helps(job: Job, shape: ModelShape, *, at_least: float = 0.10) -> tuple[bool, str]:
    """Is a 4-bit base predicted to cut the stack's memory by at least `at_least`? It shrinks
    only the blocks' weights: with few blocks the embedding table dominates and it cannot."""
    cuts = [cut for cut in plans.CUT_NAMES if cut != "qlora"]
    before = plans.predict_plan_memory(job.plan(shape, cuts)).total_bytes
    after = plans.predict_plan_memory(job.plan(shape, [*cuts, "qlora"])).total_bytes
    share = 1 - after / before
    return share >= at_least, f"a 4-bit base is predicted to cut the stack's memory by {share:.0%}"


@dataclass(frozen=True)
class Step:
    name: str  # the cut this step adds (plans.CUT_NAMES), or BASELINE
    label: str
    plan: plans.Plan  # the estimator's view of the step: every cut so far


def waterfall(job: Job, shape: ModelShape, *, qlora: bool) -> list[Step]:
    """The baseline and each cumulative step, in the order of `plans.CUTS`."""
    out, cuts = [Step(BASELINE, BASELINE, job.plan(shape))], []
    for cut in plans.CUTS:
        if cut.name == "qlora" and not qlora:
            continue
        cuts.append(cut.name)
        out.append(Step(cut.name, cut.label, job.plan(shape, cuts)))
    return out


def seed_spread(run_at, first: dict, seeds) -> dict:
    """The eval loss of one configuration at each seed (`first`: its run at seed 0, reused;
    `run_at(seed)` runs it at another) and their range: how far chance alone moves one
    configuration's quality, the yardstick for a cut's effect. "runs" holds the fresh runs'
    results by seed, for the ledger."""
    runs = {seed: run_at(seed) for seed in seeds if seed != 0}
    losses = {0: first["quality"]["eval_loss"], **{seed: r["quality"]["eval_loss"] for seed, r in runs.items()}}
    return {"eval_loss_by_seed": losses, "range": max(losses.values()) - min(losses.values()), "runs": runs}


def fast_bf16(device: hardware.Device) -> bool:
    """bf16 runs fast on GPUs with bf16 units and on CPUs with AVX512-BF16 or AMX; elsewhere
    autocast converts to bf16 and computes no faster (or slower) than fp32."""
    if device.kind == "cuda":
        return device.bf16_supported
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Calibration:
    """measured ≈ slope x predicted + intercept: this machine's line through the measured steps.
    On a GPU it stays near 1 x + 0; a CPU process's peak RSS adds what the allocator keeps and
    the runtime's own growth, which the memory parts do not list."""
    slope: float
    intercept: float

    def __call__(self, predicted_bytes: float) -> float:
        return self.slope * predicted_bytes + self.intercept


def calibrate(predicted: list[float], measured: list[float]) -> Calibration:
    """Least-squares line through (predicted, measured) peak memory."""
    import numpy as np

    x, y = np.asarray(predicted, float), np.asarray(measured, float)
    slope, intercept = np.polyfit(x, y, 1) if len(x) > 1 else (y[0] / x[0], 0.0)
    return Calibration(float(slope), float(intercept))


def quality_effects(labels: list[str], losses: list[float]) -> dict[str, float]:
    """Each step's change in eval loss over the step before it (nats; > 0 is worse)."""
    return {label: losses[i] - losses[i - 1] for i, label in enumerate(labels) if i}


def measured_cuts(plan: plans.Plan) -> list[str]:
    """The waterfall's steps a plan is made of, whose measured effects it carries. QLoRA was
    measured as a step on top of LoRA (a 4-bit base under the same adapters), so a QLoRA plan
    carries LoRA's effect too, though `plans.cuts_of` names it "qlora" alone."""
    cuts = plans.cuts_of(plan)
    return ["lora", *cuts] if plan.qlora else cuts


def cheapest_within(job: Job, shape: ModelShape, *, allowed, effects: dict[str, float], baseline_loss: float,
                    max_loss: float, budget_bytes: float, calibration: Calibration, device: hardware.Device,
                    flops_per_sec: float | None):
    """The team's question: the cheapest plan within a memory budget and a quality bound.

    Every combination of the `allowed` cuts is predicted: memory by `plans` then `calibration`
    (this machine's measured-vs-predicted line), cost from FLOPs at the measured throughput, and
    eval loss as the baseline's plus the measured effect of each of its cuts (`effects`, by cut:
    an additivity assumption that the confirming run checks), kept if at most `max_loss`.
    Returns (pick or None, table).
    """
    import pandas as pd

    rows, admissible = [], []
    for plan in plans.candidates(job.plan(shape), allowed, lora_r=job.lora_r):
        pred = plans.predict_plan(plan, device, flops_per_sec=flops_per_sec)
        loss = baseline_loss + sum(effects.get(cut, 0.0) for cut in measured_cuts(plan))
        planned = calibration(pred.memory.total_bytes)
        ok = loss <= max_loss
        if ok:
            admissible.append(pred)
        rows.append({"cuts": " + ".join(plans.cuts_of(plan)) or BASELINE,
                     "predicted MiB": pred.memory.total_bytes / 2**20, "planned MiB": planned / 2**20,
                     "fits budget": planned <= budget_bytes, "predicted eval loss": loss,
                     "within quality bound": ok, "step s": pred.step_sec, "cost $": pred.cost_usd})
    pick = plans.cheapest(admissible, budget_bytes, memory_of=lambda p: calibration(p.memory.total_bytes))
    table = pd.DataFrame(rows)
    table["pick"] = [pick is not None and r["cuts"] == (" + ".join(plans.cuts_of(pick.plan)) or BASELINE)
                     for r in rows]
    return pick, table


def predicted_vs_measured(steps, *, device: hardware.Device, flops_per_sec: float | None):
    """One row per step: the estimator's memory, FLOPs per position (padding included: bucketed
    batches vary in width) and step time beside the measured ones.
    `steps` is [(label, plan, result of `lm_training` in `isolate`)]; step time is predicted from FLOPs at the
    measured throughput `flops_per_sec` (the baseline's), so its ratio shows what FLOPs miss."""
    import pandas as pd

    rows = []
    for label, plan, result in steps:
        pred = plans.predict_plan(plan, device, flops_per_sec=flops_per_sec)
        m = result["metrics"]
        counted = m["flops"] / result["extra"]["positions_per_step"] if m.get("flops") else None
        rows.append({"step": label, "memory predicted MiB": pred.memory.total_bytes / 2**20,
                     "peak measured MiB": result["peak_mem_bytes"] / 2**20,
                     "memory measured/predicted": result["peak_mem_bytes"] / pred.memory.total_bytes,
                     "FLOPs/position predicted": plans.flops_per_token(plan), "FLOPs/position counted": counted,
                     "FLOPs counted/predicted": counted / plans.flops_per_token(plan) if counted else None,
                     "step s predicted": pred.step_sec, "step s measured": m["step_time_sec"],
                     "time measured/predicted": m["step_time_sec"] / pred.step_sec if pred.step_sec else None})
    return pd.DataFrame(rows).set_index("step")


def plot_waterfall(ax, labels: list[str], values: list[float], *, title: str, unit: str, scale: float = 1.0):
    """A waterfall: the baseline as a full bar, each step as a bar from the previous step's value
    to its own (green where the cut saved, red where it cost more), the full stack as a full bar."""
    shown = [v / scale for v in values]
    ax.bar(0, shown[0], color="#777")
    for i in range(1, len(shown)):
        prev = shown[i - 1]
        ax.bar(i, shown[i] - prev, bottom=prev, color="#2a7" if shown[i] <= prev else "#c33")
        ax.plot([i - 1.4, i + 0.4], [prev, prev], color="k", lw=0.5)
    ax.bar(len(shown), shown[-1], color="#275")
    ax.set_xticks(range(len(shown) + 1), [*labels, "full stack"], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(unit)
    ax.set_title(title, fontsize=10)


def per_million_tokens(result: dict, device: hardware.Device | None = None) -> dict[str, float | None]:
    """$, energy and CO2 per 1M real training tokens (padding excluded) at the measured
    steady-state step time (the warm-up and compile step excluded): the unit a fine-tuning bill
    is quoted in."""
    from .. import meter

    x = result["extra"]
    seconds = result["metrics"]["step_time_sec"] * 1e6 / x["real_tokens_per_step"]
    values, _ = meter.price(seconds, device=device)
    return {"usd_per_1m_tokens": values["cost_usd"], "energy_j_per_1m_tokens": values["energy_j"],
            "co2_g_per_1m_tokens": values["co2_g"]}
