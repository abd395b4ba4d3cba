"""LoRA measured in-process: what the adapter adds (computed from the model's own shapes), that
merging it changes nothing, where the memory goes instead, and the checkpointing trap.

The fine-tuning runs themselves (full / LoRA / QLoRA, each in a fresh process) are the
notebook's own `lora` / `qlora` functions run by `costlab.workloads.lm_training`; this module
holds what 02 shows beside them.
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from .. import meter, models


def _target_shapes(model: nn.Module, targets: list[str]) -> list[tuple[int, int]]:
    """(in_features, out_features) of each LoRA target in one block, from the weights themselves.
    GPT-2's Conv1D stores its weight as (in, out), nn.Linear as (out, in)."""
    from transformers.pytorch_utils import Conv1D

    block = models.transformer_blocks(model)[0]
    shapes = []
    for name, module in block.named_modules():
        if name.rsplit(".", 1)[-1] not in targets:
            continue
        if isinstance(module, Conv1D):
            shapes.append(tuple(module.weight.shape))
        elif isinstance(module, nn.Linear):
            shapes.append((module.in_features, module.out_features))
    if not shapes:
        raise ValueError(f"none of {targets} found in a block of {type(model).__name__}")
    return shapes


def lora_params_per_block(model: nn.Module, r: int, targets: list[str] | None = None) -> int:
    """Parameters LoRA adds to one block: A is r x in, B is out x r, for each target."""
    targets = targets or models.lora_targets(model)
    return sum(r * (fan_in + fan_out) for fan_in, fan_out in _target_shapes(model, targets))


def computed_shares(model: nn.Module, name_or_path: str, r: int) -> dict[str, dict[str, float]]:
    """Trainable share of LoRA for the model as loaded and for the full-depth model.

    The full-depth figures are computed (blocks are identical in shape: the loaded model's
    non-block parameters plus depth x one block's), not measured: nothing that size is built.
    """
    blocks = models.transformer_blocks(model)
    per_block = sum(p.numel() for p in blocks[0].parameters())
    outside = models.count_params(model) - sum(p.numel() for p in blocks.parameters())
    lora_block = lora_params_per_block(model, r)
    out = {}
    for label, depth in (("as loaded", len(blocks)), ("full depth (computed)", models.depth(name_or_path))):
        total, lora = outside + depth * per_block, depth * lora_block
        out[label] = {"layers": depth, "total_params": total, "lora_params": lora,
                      "share": lora / (total + lora)}
    return out


def adapter_grad_norm(model: nn.Module, batch: dict) -> float:
    """L2 norm of the trainable parameters' gradients after one forward/backward on `batch`;
    0.0 when the loss is not connected to any trainable parameter at all."""
    model.zero_grad(set_to_none=True)
    with warnings.catch_warnings():
        # reentrant checkpointing warns "None of the inputs have requires_grad=True": the very
        # trap measured here, so the number speaks instead of the warning.
        warnings.simplefilter("ignore", UserWarning)
        loss = model(**batch).loss
        if not loss.requires_grad:
            return 0.0
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) if grads else 0.0


def _checkpointing(model: nn.Module, reentrant: bool) -> None:
    from ..train import enable_checkpointing

    enable_checkpointing(model.get_base_model() if hasattr(model, "get_base_model") else model, reentrant=reentrant)


def checkpointing_pitfall(peft_model: nn.Module, batch: dict) -> list[dict]:
    """Adapter gradient norms with activation checkpointing, with and without the hook that makes
    the (frozen) embedding output require grad. Reentrant checkpointing only back-propagates into
    a block if one of its *inputs* requires grad; with a frozen embedding none does, so the
    adapters inside get nothing. Leaves the model with non-reentrant checkpointing on."""
    peft_model.train()
    rows = [{"setup": "no checkpointing", "grad_norm": adapter_grad_norm(peft_model, batch)}]
    _checkpointing(peft_model, reentrant=True)
    auto = bool(getattr(peft_model.get_base_model(), "_require_grads_hooks", None))
    rows.append({"setup": "reentrant, as enabled by transformers"
                 + (" (it added the hook itself)" if auto else " (no hook added)"),
                 "grad_norm": adapter_grad_norm(peft_model, batch)})
    peft_model.disable_input_require_grads()
    rows.append({"setup": "reentrant, no input-grad hook (own checkpoint wrapper, older transformers)",
                 "grad_norm": adapter_grad_norm(peft_model, batch)})
    peft_model.enable_input_require_grads()
    rows.append({"setup": "reentrant + model.enable_input_require_grads()",
                 "grad_norm": adapter_grad_norm(peft_model, batch)})
    _checkpointing(peft_model, reentrant=False)
    peft_model.disable_input_require_grads()
    rows.append({"setup": "non-reentrant (use_reentrant=False), no hook",
                 "grad_norm": adapter_grad_norm(peft_model, batch)})
    return rows


@torch.no_grad()
def merge_check(peft_model: nn.Module, batch: dict) -> dict[str, float]:
    """Logits of the adapter model vs the same model after `merge_and_unload()` (W + BA folded
    into W), and how far the adapter moved the logits in the first place (so a match is not
    the trivial one of an adapter whose B is still zero)."""
    peft_model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with peft_model.disable_adapter():
        base = peft_model(**inputs).logits
    adapted = peft_model(**inputs).logits
    merged_model = peft_model.merge_and_unload()
    merged = merged_model(**inputs).logits
    return {"adapter_moves_logits_by": float((adapted - base).abs().max()),
            "merged_vs_adapter_max_abs_diff": float((merged - adapted).abs().max()),
            "allclose": bool(torch.allclose(merged, adapted, atol=1e-4, rtol=1e-4)),
            "merged_has_lora_modules": any("lora_" in n for n, _ in merged_model.named_modules())}


def saved_bytes_by_seq_len(model: nn.Module, batch: dict, seq_lens: list[int]) -> list[dict]:
    """Bytes the forward pass keeps for backward at each sequence length (measured), by tiling
    one batch's tokens out to that length. Activations scale with tokens; LoRA does not touch them."""
    model.train()
    rows = []
    for seq_len in seq_lens:
        reps = -(-seq_len // batch["input_ids"].shape[1])
        tiled = {k: v.repeat(1, reps)[:, :seq_len] for k, v in batch.items()}
        rows.append({"seq_len": seq_len, "tokens": tiled["input_ids"].numel(),
                     "activation_bytes": meter.saved_tensor_bytes(lambda: model(**tiled).loss)})
    return rows


def stored_weight_bytes(model: nn.Module) -> int:
    """Bytes the model's weights occupy as stored: parameters and buffers in their dtype, and for
    bitsandbytes' 4-bit layers the packed weights (two values per byte) plus their block scales
    (`quant_state.absmax`, and the scales of those scales with double quantization)."""
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    for param in model.parameters():
        state = getattr(param, "quant_state", None)
        while state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            state = state.state2 if getattr(state, "nested", False) else None
    return total
