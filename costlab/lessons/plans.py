"""Plans: what a fine-tuning job will cost before it runs (the what-if calculator's model).

A `Plan` is sizes plus cuts, named by `CUTS`: the one ordered list of the cuts that the capstone's
waterfall, this estimator and the what-if calculator all read. `predict_plan` gives memory by part (fits or not),
FLOPs, time (FLOPs / sustained FLOP/s, with an explicit utilization), $ (price table), energy
(power table x time) and CO2 (energy x grid intensity), with every assumption listed.
Memory and FLOPs build on `costlab.estimate` (bytes per parameter, Korthikanti activations, 6·N·D).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

from .. import hardware
from ..estimate import (BYTES_PER_VALUE, NF4_DQ_BYTES_PER_WEIGHT, OPTIMIZER_BYTES_PER_PARAM, MemoryEstimate,
                        ModelShape, activation_bytes, optimizer_bytes_for)


# Assumed share of the device's dense peak that a fine-tuning step sustains (model FLOPs
# utilization). 0.3-0.5 is typical of well-fed GPUs; small models and CPUs reach less.
DEFAULT_UTILIZATION = 0.4
# Memory a plan cannot use: the CUDA context and allocator slack on a GPU; on a CPU, the Python
# process with torch and transformers imported. Assumed, overridable.
DEFAULT_RESERVE_BYTES = 2**30
# Tokens per chunk of a chunked LM-head loss: the most logits alive at once (assumed; the
# capstone's notebook uses the same).
LOSS_CHUNK_TOKENS = 64


@dataclass(frozen=True)
class Cut:
    name: str  # what a Plan, the waterfall and the calculator call it
    label: str  # the waterfall's step
    toggle: str  # the calculator's checkbox


# The cuts in the order the capstone stacks them: the largest predicted saving first (LoRA's
# gradients and optimizer states), then what the hardware gives (bf16), what padding and the
# vocabulary cost (bucketing, the chunked loss), activations (checkpointing, SDPA), and the small
# ones last (8-bit states of a few adapters, compile); QLoRA only where it is predicted to help.
CUTS: tuple[Cut, ...] = (
    Cut("lora", "+ LoRA", "LoRA adapters"),
    Cut("bf16", "+ bf16", "bf16 autocast, frozen base in bf16"),
    Cut("bucketing", "+ length bucketing", "length-bucketed batches (no padding)"),
    Cut("chunked_loss", "+ chunked loss", "chunked LM-head loss (no full logits)"),
    Cut("grad_checkpointing", "+ checkpointing", "activation checkpointing"),
    Cut("sdpa", "+ SDPA attention", "SDPA attention (no L x L probabilities)"),
    Cut("adamw8bit", "+ 8-bit AdamW", "8-bit AdamW"),
    Cut("compile", "+ compile", "torch.compile"),
    Cut("qlora", "+ QLoRA", "QLoRA: 4-bit base"),
)
CUT_NAMES = tuple(cut.name for cut in CUTS)


@dataclass(frozen=True)
class Plan:
    """A causal-LM fine-tuning job as data: sizes and the cuts (`CUTS`); the defaults are none of
    them (fp32, eager attention, batches padded to seq_len, the full logits)."""
    shape: ModelShape
    seq_len: int  # tokens each sequence is padded (or cut) to
    batch: int
    train_tokens: float = 0.0  # real tokens to train on: turns step time into job time, $ and CO2
    lora_r: int = 0  # 0 = full fine-tuning; r > 0 = LoRA adapters of rank r on query/value
    qlora: bool = False  # frozen base's block weights in 4-bit NF4 (needs lora_r)
    grad_checkpointing: bool = False
    autocast: str | None = None  # None (fp32) | "bf16"
    optimizer: str = "adamw"  # adamw | adamw8bit
    compile: bool = False
    sdpa: bool = False  # fused attention: no batch x heads x L x L probabilities kept
    padding_share: float = 0.0  # share of the padded batches' positions that are padding
    bucketing: bool = False  # batches of similar lengths: the padding is gone (assumed: all of it)
    chunked_loss: bool = False  # LM head + loss in chunks of LOSS_CHUNK_TOKENS, recomputed in backward

    def __post_init__(self) -> None:
        if self.qlora and not self.lora_r:
            raise ValueError("qlora=True needs lora_r > 0 (QLoRA trains LoRA adapters on a 4-bit base)")
        if self.optimizer not in OPTIMIZER_BYTES_PER_PARAM:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {list(OPTIMIZER_BYTES_PER_PARAM)}")
        if self.autocast not in (None, "bf16", "fp16"):
            raise ValueError(f"autocast must be None, 'bf16' or 'fp16', got {self.autocast!r}")
        if min(self.seq_len, self.batch) < 1 or self.train_tokens < 0:
            raise ValueError("seq_len and batch must be >= 1 and train_tokens >= 0")
        if not 0 <= self.padding_share < 1:
            raise ValueError(f"padding_share must be in [0, 1), got {self.padding_share}")

    @property
    def base_dtype(self) -> str | None:
        """Storage of LoRA's frozen base: bf16 under bf16 autocast (weights that are never
        updated need no fp32 master copy), else fp32. Trained weights always keep fp32."""
        return "bf16" if self.lora_r and self.autocast == "bf16" else None

    @property
    def width(self) -> float:
        """Mean positions per sequence: seq_len, or only the real tokens once bucketed."""
        return self.seq_len * (1 - self.padding_share) if self.bucketing else self.seq_len

    @property
    def tokens_per_step(self) -> float:
        """Positions a step computes, padding included."""
        return self.width * self.batch

    @property
    def real_tokens_per_step(self) -> float:
        return self.seq_len * (1 - self.padding_share) * self.batch


def embedding_params(shape: ModelShape) -> int:
    """Input embedding (+ a separate LM head when untied): V·h each. A lookup, not a matmul."""
    return shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)


def block_params(shape: ModelShape) -> int:
    """Everything but the embeddings: the transformer blocks' weights (and a few norms)."""
    return shape.total_params - embedding_params(shape)


def lora_params(shape: ModelShape, r: int) -> int:
    """LoRA on the query (h -> h) and value (h -> kv_dim) projections: r·(in + out) each."""
    kv_dim = shape.hidden * (shape.kv_heads or shape.heads) // shape.heads
    return shape.layers * r * (2 * shape.hidden + shape.hidden + kv_dim)


def lora_tensor_sizes(shape: ModelShape, r: int) -> list[int]:
    """Value counts of each adapter tensor: A (r x h) and B (out x r) for query and value, per layer."""
    kv_dim = shape.hidden * (shape.kv_heads or shape.heads) // shape.heads
    return [r * shape.hidden, shape.hidden * r, r * shape.hidden, kv_dim * r] * shape.layers


def trained_tensor_sizes(plan: Plan) -> list[int]:
    """Value counts of the tensors the optimizer updates. Full fine-tuning of a Llama-shaped model:
    the norms' weights (two per block and a final one, hidden values each) apart, and the rest as
    one lump (only the 8-bit optimizer's small-tensor rule needs them apart)."""
    if plan.lora_r:
        return lora_tensor_sizes(plan.shape, plan.lora_r)
    norms = [plan.shape.hidden] * (2 * plan.shape.layers + 1)
    return norms + [plan.shape.total_params - sum(norms)]


def optimizer_state_bytes(plan: Plan) -> float:
    return optimizer_bytes_for(trained_tensor_sizes(plan), plan.optimizer)


def trainable_params(plan: Plan) -> int:
    return lora_params(plan.shape, plan.lora_r) if plan.lora_r else plan.shape.total_params


def predict_plan_memory(plan: Plan, *, device_kind: str = "cuda") -> MemoryEstimate:
    """Memory of one training step of `plan`, from the shape alone (an upper bound: it adds parts
    that are live at different moments of the step, as a plan for a budget should)."""
    shape, trainable = plan.shape, trainable_params(plan)
    fp32 = BYTES_PER_VALUE["fp32"]
    emb, blocks = embedding_params(shape), block_params(shape)
    if not plan.lora_r:
        weights = shape.total_params * fp32
    else:  # adapters in fp32; the frozen base in its storage dtype, the blocks in NF4 with QLoRA
        base = BYTES_PER_VALUE[plan.base_dtype or "fp32"]
        weights = trainable * fp32 + emb * base + blocks * (NF4_DQ_BYTES_PER_WEIGHT if plan.qlora else base)
    precision = "bf16" if plan.autocast else "fp32"
    # Llama-family blocks: no dropout; eager attention keeps the s x s probabilities, SDPA does not.
    acts = activation_bytes(shape, seq_len=round(plan.width), batch=plan.batch, precision=precision,
                            checkpointing=plan.grad_checkpointing, dropout=False, attention_scores=not plan.sdpa)
    # fp32 logits, log-probabilities and their gradient (+ the 16-bit logits under autocast), for
    # every token at once or for one chunk (the chunked loss keeps the hidden states instead).
    logit_tokens = min(LOSS_CHUNK_TOKENS, plan.tokens_per_step) if plan.chunked_loss else plan.tokens_per_step
    head = logit_tokens * shape.vocab * (3 * fp32 + (BYTES_PER_VALUE["bf16"] if plan.autocast else 0))
    if plan.chunked_loss:
        head += plan.tokens_per_step * shape.hidden * fp32
    if plan.autocast and not plan.base_dtype:  # an fp32 head matrix is cast to 16-bit at each forward
        head += shape.vocab * shape.hidden * BYTES_PER_VALUE["bf16"]  # and the copy kept for backward
    return MemoryEstimate(weights, trainable * fp32, optimizer_state_bytes(plan),
                          acts, head, optimizer_workspace_bytes(plan, device_kind))


def optimizer_workspace_bytes(plan: Plan, device_kind: str = "cuda") -> float:
    """Temporaries of one optimizer step. torch's AdamW updates every tensor at once on CUDA
    (foreach kernels: one fp32 value per trained parameter) and one tensor at a time on CPU (two
    fp32 temporaries of the largest tensor). bitsandbytes' 8-bit AdamW is fused in place on CUDA;
    its CPU path dequantizes both states to fp32 and copies the gradient, tensor by tensor (about
    five fp32 temporaries of the largest tensor): on CPU it can need *more* memory at its peak."""
    trainable = trainable_params(plan)
    # The largest trained tensor: the embedding table in full fine-tuning, an adapter under LoRA.
    largest = plan.shape.vocab * plan.shape.hidden if not plan.lora_r else plan.lora_r * 4 * plan.shape.hidden
    fp32 = BYTES_PER_VALUE["fp32"]
    if plan.optimizer == "adamw":
        return fp32 * trainable if device_kind == "cuda" else 2 * fp32 * largest
    if plan.optimizer == "adamw8bit":
        return 0.0 if device_kind == "cuda" else 5 * fp32 * largest
    return 0.0


def flops_per_token(plan: Plan) -> float:
    """Matmul FLOPs per trained token: forward 2·N; backward 4·N when every weight is trained
    (input and weight gradients), 2·N when the base is frozen (input gradients only, LoRA);
    checkpointing adds one more forward of the blocks, the chunked loss one more of the LM head.
    N counts the LM head once (the input embedding is a lookup). 6·N·D is the full fine-tuning
    case (Kaplan et al. 2020)."""
    head = plan.shape.vocab * plan.shape.hidden
    n = block_params(plan.shape) + head
    backward = 2 * n if plan.lora_r else 4 * n
    recompute = (2 * block_params(plan.shape) if plan.grad_checkpointing else 0) + (2 * head if plan.chunked_loss else 0)
    return 2 * n + backward + recompute


@dataclass(frozen=True)
class PlanPrediction:
    """What a plan will cost on a device, with every assumption that went into it."""
    plan: Plan
    device: str
    memory: MemoryEstimate
    capacity_bytes: float | None  # the device's memory (None: unknown)
    reserve_bytes: float  # memory the plan cannot use (context, runtime)
    flops_per_step: float
    flops_per_sec: float | None  # sustained, = peak x utilization (or measured)
    step_sec: float | None
    total_sec: float | None
    cost_usd: float | None
    energy_j: float | None
    co2_g: float | None
    assumptions: tuple[str, ...]

    @property
    def fits(self) -> bool | None:
        if self.capacity_bytes is None:
            return None
        return self.memory.total_bytes + self.reserve_bytes <= self.capacity_bytes


def _throughput(plan: Plan, device, utilization: float, measured: float | None) -> tuple[float | None, str]:
    if measured is not None:
        return measured, f"throughput {measured / 1e9:.3g} GFLOP/s, measured on this machine (not scaled per cut)"
    # 16-bit tensor cores: fp16 on any GPU of the table, bf16 where the device has bf16 units.
    bf16 = plan.autocast == "fp16" or (plan.autocast == "bf16" and device.bf16_supported)
    peak = hardware.peak_flops(device) if bf16 else hardware.peak_flops_fp32(device)
    if peak is None:
        return None, f"no peak FLOP/s known for {device.name}: time, $ and CO2 need a measured throughput"
    kind = "16-bit tensor-core" if bf16 else "fp32"
    note = "" if plan.autocast is None or bf16 else f" ({device.name} has no bf16 units: fp32 speed assumed)"
    return peak * utilization, (f"throughput {utilization:.0%} of the {kind} peak "
                                f"{peak / 1e12:.3g} TFLOP/s (utilization assumed){note}")


def predict_plan(plan: Plan, device=None, *, utilization: float = DEFAULT_UTILIZATION,
                 flops_per_sec: float | None = None, reserve_bytes: float = DEFAULT_RESERVE_BYTES) -> PlanPrediction:
    """Memory (fits or not), time, $, energy and CO2 of `plan` on `device` (a hardware.Device:
    `hardware.table_device("H100")`, or this machine by default). Time = FLOPs / (peak FLOP/s x
    utilization), or FLOPs / `flops_per_sec` when a measured throughput is given; $ = time x the
    price table; energy = the power table x time; CO2 = energy x grid intensity."""
    device = device or hardware.detect()
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization}")
    memory = predict_plan_memory(plan, device_kind=device.kind)
    flops = flops_per_token(plan) * plan.tokens_per_step
    rate, rate_note = _throughput(plan, device, utilization, flops_per_sec)
    step = None if rate is None else flops / rate
    total = None if step is None else step * plan.train_tokens / plan.real_tokens_per_step
    per_hour, watts, grid = hardware.price_usd_per_hour(device), hardware.power_w(device), hardware.grid_g_per_kwh()
    cost = None if total is None or per_hour is None else per_hour * total / 3600
    energy = None if total is None or watts is None else watts * total
    co2 = None if energy is None else energy / 3.6e6 * grid
    assumptions = (
        "memory: weights + grads + optimizer states + activations (Korthikanti et al.; no dropout; "
        f"{'SDPA: no' if plan.sdpa else 'eager attention: with the'} L x L probabilities) + LM-head logits "
        f"({f'one chunk of {LOSS_CHUNK_TOKENS} tokens' if plan.chunked_loss else 'every token'}) + optimizer "
        "workspace, added as if all live at once",
        f"padding {plan.padding_share:.0%} of the positions"
        + (" removed by length bucketing (assumed: all of it)" if plan.bucketing else ""),
        f"reserve {reserve_bytes / 2**30:.2g} GiB the plan cannot use (CUDA context / Python runtime), assumed",
        "LoRA on the attention query and value projections; the frozen base in bf16 under bf16 "
        "autocast, else fp32; QLoRA: its blocks in NF4",
        f"FLOPs per position {flops_per_token(plan) / 1e6:.4g} M (2N forward, 4N or 2N backward, +2N blocks "
        "recomputed with checkpointing, +1 forward of the head with the chunked loss; attention scores ignored)",
        rate_note,
        "torch.compile and 8-bit AdamW change neither FLOPs nor throughput here: measure them",
        f"price {'unknown' if per_hour is None else f'${per_hour:.3g}/h'} (table; hardware.set_price to change)",
        f"power {'unknown' if watts is None else f'{watts:.0f} W'} at full load for the whole run (table)",
        f"grid {grid:.0f} gCO2/kWh (hardware.set_grid_intensity to change)",
    )
    capacity = device.memory_bytes
    return PlanPrediction(plan, device.name, memory, capacity, reserve_bytes, flops, rate, step, total,
                          cost, energy, co2, assumptions)


def cheapest(predictions: list[PlanPrediction], budget_bytes: float,
             memory_of=lambda p: p.memory.total_bytes) -> PlanPrediction | None:
    """The plan predicted to cost least (then to need fewest cuts, then to use least memory)
    among those whose memory (`memory_of`, default the prediction's total) is within
    `budget_bytes`; None when none fits. Quality is not predicted here: pass only plans whose
    cuts were measured to keep quality within its bound."""
    fitting = [p for p in predictions if memory_of(p) <= budget_bytes]
    if not fitting:
        return None
    key = lambda p: (p.step_sec if p.step_sec is not None else p.flops_per_step,  # noqa: E731
                     len(cuts_of(p.plan)), memory_of(p))
    return min(fitting, key=key)


def cuts_of(plan: Plan) -> list[str]:
    """The names (CUT_NAMES, in their order) of the cuts a plan has on."""
    on = {"lora": plan.lora_r > 0 and not plan.qlora, "qlora": plan.qlora,
          "grad_checkpointing": plan.grad_checkpointing, "bf16": plan.autocast == "bf16",
          "adamw8bit": plan.optimizer == "adamw8bit", "compile": plan.compile, "sdpa": plan.sdpa,
          "bucketing": plan.bucketing, "chunked_loss": plan.chunked_loss}
    return [name for name in CUT_NAMES if on[name]]


def with_cuts(plan: Plan, cuts, *, lora_r: int = 8) -> Plan:
    """`plan` with exactly the named cuts on (names from CUT_NAMES), the others off."""
    unknown = set(cuts) - set(CUT_NAMES)
    if unknown:
        raise ValueError(f"unknown cuts {sorted(unknown)}; choose from {CUT_NAMES}")
    changes = {"grad_checkpointing": "grad_checkpointing" in cuts, "compile": "compile" in cuts,
               "autocast": "bf16" if "bf16" in cuts else None,
               "optimizer": "adamw8bit" if "adamw8bit" in cuts else "adamw",
               "lora_r": lora_r if {"lora", "qlora"} & set(cuts) else 0, "qlora": "qlora" in cuts,
               "sdpa": "sdpa" in cuts, "bucketing": "bucketing" in cuts, "chunked_loss": "chunked_loss" in cuts}
    return replace(plan, **changes)


def candidates(plan: Plan, allowed, *, lora_r: int = 8) -> list[Plan]:
    """Every distinct combination of the `allowed` cuts on top of `plan` (qlora implies lora)."""
    allowed = [c for c in CUT_NAMES if c in set(allowed)]
    plans = (with_cuts(plan, combo, lora_r=lora_r)
             for k in range(len(allowed) + 1) for combo in itertools.combinations(allowed, k))
    return list(dict.fromkeys(plans))


def llama_shape(*, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int,
                tied: bool) -> ModelShape:
    """The shape of a Llama-family model from its config numbers (parameters counted exactly:
    q, k, v, o projections, a gated MLP of three matrices, two norms per block, the embeddings)."""
    kv_dim = hidden * kv_heads // heads
    linear_per_block = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * intermediate
    per_block = linear_per_block + 2 * hidden
    total = layers * per_block + vocab * hidden * (1 if tied else 2) + hidden
    return ModelShape(total, hidden, layers, heads, vocab, kv_heads, tied, layers * linear_per_block)
