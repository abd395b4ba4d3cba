"""Predictions made before a variant runs: bytes (weights, grads, optimizer states, activations)
and FLOPs (6·N·D), so each notebook can show predicted beside measured.

Sources: bytes per parameter by precision and optimizer (ZeRO paper; Hugging Face "model
memory anatomy"); activations per layer s·b·h·(34 + 5·a·s/h) bytes in 16-bit, ~2·s·b·h with
full recomputation (Korthikanti et al. 2022); training FLOPs ~ 6·N·D (Kaplan et al. 2020).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BYTES_PER_VALUE = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "nf4": 0.5}
# NF4 as stored with double quantization: 4 bits per weight, plus one 8-bit absmax per block of
# 64 weights and one fp32 scale per 256 blocks (Dettmers et al. 2023): about 4.127 bits.
NF4_DQ_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
# Storage formats that a quantized load applies to the Linear layers only (bitsandbytes).
QUANTIZED_FORMATS = ("int8", "nf4")
# Optimizer state bytes per trainable parameter (fp32 parameters).
OPTIMIZER_BYTES_PER_PARAM = {"adamw": 8, "adamw8bit": 2, "sgd_momentum": 4, "sgd": 0}
# torch's AdamW also keeps one fp32 `step` scalar per parameter tensor.
ADAMW_STEP_BYTES_PER_TENSOR = 4
# bitsandbytes keeps the states of tensors with fewer values than this in 32-bit (its
# `min_8bit_size`): a small LoRA adapter gets no 8-bit saving at all. 8-bit states are quantized
# in blocks of 256 values, each with an fp32 scale per state; the two 256-entry fp32
# quantization maps are shared by every tensor of the optimizer.
BNB_MIN_8BIT_SIZE = 4096
BNB_BLOCK = 256
BNB_QMAPS_BYTES = 2 * 256 * 4


def optimizer_bytes_for(sizes, optimizer: str) -> float:
    """Optimizer-state bytes for trained tensors of these sizes (value counts); for 8-bit AdamW,
    tensors under BNB_MIN_8BIT_SIZE values keep 32-bit states."""
    if optimizer not in OPTIMIZER_BYTES_PER_PARAM:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {list(OPTIMIZER_BYTES_PER_PARAM)}")
    per = OPTIMIZER_BYTES_PER_PARAM[optimizer]
    if optimizer != "adamw8bit":
        return per * sum(sizes)
    small = [n for n in sizes if n < BNB_MIN_8BIT_SIZE]
    large = [n for n in sizes if n >= BNB_MIN_8BIT_SIZE]
    scales = sum(2 * 4 * -(-n // BNB_BLOCK) for n in large)
    return (OPTIMIZER_BYTES_PER_PARAM["adamw"] * sum(small) + per * sum(large) + scales
            + (BNB_QMAPS_BYTES if large else 0))


@dataclass(frozen=True)
class ModelShape:
    """What the estimator needs to know about a transformer."""
    total_params: int
    hidden: int
    layers: int
    heads: int
    vocab: int
    kv_heads: int | None = None  # grouped-query attention: key/value heads (None = heads)
    tied_embeddings: bool = True  # the LM head reuses the input embedding matrix
    # Weights of the Linear layers that 4-bit / 8-bit loading quantizes (every nn.Linear or
    # GPT-2 Conv1D but the LM head); embeddings, norms and biases keep their dtype. None: all
    # but the embeddings, for a shape known only from its sizes.
    linear_params: int | None = None

    @classmethod
    def from_model(cls, model: torch.nn.Module) -> "ModelShape":
        c = model.config
        get = lambda *names: next(getattr(c, n) for n in names if getattr(c, n, None) is not None)  # noqa: E731
        return cls(sum(p.numel() for p in model.parameters()), get("hidden_size", "n_embd", "d_model"),
                   get("num_hidden_layers", "n_layer"), get("num_attention_heads", "n_head"),
                   get("vocab_size"), getattr(c, "num_key_value_heads", None),
                   bool(getattr(c, "tie_word_embeddings", True)), quantizable_params(model))

    def quantized_params(self) -> int:
        """Weights that a quantized load stores in 4 or 8 bits (see `linear_params`)."""
        if self.linear_params is not None:
            return self.linear_params
        return self.total_params - self.vocab * self.hidden * (1 if self.tied_embeddings else 2)


def quantizable_params(model: torch.nn.Module) -> int:
    """Weights of the Linear (and GPT-2 Conv1D) layers that bitsandbytes' 4-bit and 8-bit loading
    replaces, counted on the unquantized model: every one but the LM head, which transformers
    leaves in its dtype (with tied embeddings it is the input embedding itself)."""
    from transformers.pytorch_utils import Conv1D

    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head else None
    return sum(m.weight.numel() for m in model.modules()
               if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head)


@dataclass(frozen=True)
class MemoryEstimate:
    """A training step's memory by part (bytes). The plan predictor (`lessons.plans`) adds two
    parts a built model's `state_bytes` leaves as None: `head_bytes`, the LM head's
    vocabulary-sized work (logits, their fp32 copy and log-softmax, the gradient of each, and
    under autocast a 16-bit copy of an fp32 head matrix; with a 50k vocabulary it outweighs a few
    blocks' activations), and `workspace_bytes`, the optimizer's temporaries (AdamW's update needs
    one fp32 tensor's worth per tensor it updates at once: all of them with foreach kernels on
    CUDA, one at a time on CPU)."""
    weights_bytes: float
    grad_bytes: float
    optimizer_state_bytes: float
    activation_bytes: float
    head_bytes: float | None = None
    workspace_bytes: float | None = None

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.grad_bytes + self.optimizer_state_bytes + self.activation_bytes
                + (self.head_bytes or 0) + (self.workspace_bytes or 0))

    def as_dict(self) -> dict[str, float]:
        parts = {"weights": self.weights_bytes, "grads": self.grad_bytes,
                 "optimizer": self.optimizer_state_bytes, "activations": self.activation_bytes,
                 "LM head": self.head_bytes, "optimizer workspace": self.workspace_bytes}
        return {**{k: v for k, v in parts.items() if v is not None}, "total": self.total_bytes}


def trainable_tensors(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def state_bytes(model: torch.nn.Module, optimizer: str = "adamw") -> MemoryEstimate:
    """Exact prediction of weights + grads + optimizer states for a built model (no activations).

    Exact for torch.optim.AdamW / SGD, which keep states in the parameter's dtype; bitsandbytes'
    8-bit AdamW also keeps small per-block scales, so its figure is approximate (tensors under
    BNB_MIN_8BIT_SIZE values are counted at 32-bit, as bitsandbytes keeps them).
    """
    if optimizer not in OPTIMIZER_BYTES_PER_PARAM:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {list(OPTIMIZER_BYTES_PER_PARAM)}")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = trainable_tensors(model)
    grads = sum(p.numel() * p.element_size() for p in trainable)
    if optimizer == "adamw":
        opt = sum(2 * p.numel() * p.element_size() + ADAMW_STEP_BYTES_PER_TENSOR for p in trainable)
    else:
        opt = optimizer_bytes_for([p.numel() for p in trainable], optimizer)
    return MemoryEstimate(weights, grads, opt, 0)


def activation_bytes(shape: ModelShape, *, seq_len: int, batch: int, precision: str = "fp32",
                     checkpointing: bool = False, dropout: bool = True, attention_scores: bool = True,
                     recompute_peak: bool = True) -> float:
    """Korthikanti et al. 2022: s·b·h·(34 + 5·a·s/h) bytes per layer in 16-bit; 2·s·b·h per layer
    with full recomputation (plus one layer's worth, live while it is recomputed).

    The 34 + 5·a·s/h splits into 16·s·b·h + 2·a·s²·b activation values (2 bytes each in 16-bit,
    `precision` scales them) and 2·s·b·h + a·s²·b bytes of dropout masks, which are bool tensors:
    1 byte in any precision. (Fixed: this function used to scale the masks with the precision
    too, giving 68 + 10·a·s/h in fp32 instead of 66 + 9·a·s/h.)
    Keyword switches, defaults = the published formula:
      dropout=False           no masks (models trained without dropout, e.g. Llama).
      attention_scores=False  SDPA / FlashAttention kernels keep neither the a·s² softmax nor its
                              dropout; they keep the attention output (s·b·h) and a log-sum-exp
                              (a·s·b fp32) instead, so memory grows linearly in s, not quadratically.
      recompute_peak=False    with checkpointing, only the block inputs the forward pass leaves
                              behind (the recomputed layer belongs to the backward peak).
    """
    s, b, h, a = seq_len, batch, shape.hidden, shape.heads
    value = BYTES_PER_VALUE[precision]
    values_sbh = 16 + (0 if attention_scores else 1)
    values_as2b = 2 if attention_scores else 0
    masks = (2 * s * b * h + (a * s * s * b if attention_scores else 0)) if dropout else 0
    lse = 0 if attention_scores else 4 * a * s * b
    per_layer = (values_sbh * s * b * h + values_as2b * a * s * s * b) * value + masks + lse
    if checkpointing:
        return shape.layers * s * b * h * value + (per_layer if recompute_peak else 0)
    return shape.layers * per_layer


def training_flops(n_params: float, tokens: float) -> float:
    """6·N·D: forward 2 FLOPs per parameter per token, backward twice that."""
    return 6 * n_params * tokens


def predict_memory(shape: ModelShape, *, seq_len: int, batch: int, trainable_params: int | None = None,
                   precision: str = "fp32", optimizer: str = "adamw", checkpointing: bool = False,
                   weight_precision: str | None = None) -> MemoryEstimate:
    """Memory of a training step from the shape alone (for plans made before anything runs).

    trainable_params: all parameters by default; LoRA trains a small fraction.
    weight_precision: the frozen base's storage, default `precision`. "bf16" stores every frozen
    weight in bf16; a quantized load ("nf4" for QLoRA, "int8") stores only the Linear layers'
    weights (`ModelShape.linear_params`) in that format, the rest (embeddings, norms) at `precision`.
    """
    n = shape.total_params
    trainable = n if trainable_params is None else trainable_params
    frozen = n - trainable
    master = BYTES_PER_VALUE["fp32"]  # trainable weights are kept in fp32 (mixed precision too)
    stored = weight_precision or precision
    if stored in QUANTIZED_FORMATS:
        quantized, rest = min(shape.quantized_params(), frozen), precision
    else:
        quantized, rest = 0, stored
    weights = trainable * master + quantized * BYTES_PER_VALUE[stored] + (frozen - quantized) * BYTES_PER_VALUE[rest]
    return MemoryEstimate(weights, trainable * master, OPTIMIZER_BYTES_PER_PARAM[optimizer] * trainable,
                          activation_bytes(shape, seq_len=seq_len, batch=batch, precision=precision,
                                           checkpointing=checkpointing))
