"""Lesson 13's measuring helpers, none of them a cut: whether this device has fast bf16 matmuls,
unpadded token blocks for a sequence-length sweep, the bytes the attention layers keep for
backward, the padding share of batches and the FLOPs per real (non-padding) token."""
from __future__ import annotations

import torch

from .. import data, hardware, meter, models


def bf16_fast_here(flags: set[str] | None = None, cuda: bool | None = None) -> tuple[bool, str]:
    """(expected fast, why): bf16 matmuls beat fp32 on a CUDA GPU with bf16 units, or on a CPU
    with AVX512-BF16 or AMX (the CPU flags are read from /proc/cpuinfo)."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        ok = torch.cuda.is_bf16_supported()
        return ok, "CUDA GPU with bf16 support" if ok else "CUDA GPU without bf16 units"
    found = sorted((hardware.cpu_flags() if flags is None else flags) & hardware.FAST_BF16_CPU_FLAGS)
    return bool(found), ", ".join(found) if found else "no AVX512-BF16 or AMX on this CPU"


def token_blocks(tokenizer, batch_size: int, seq_len: int, *, split: str = "train") -> dict:
    """`batch_size` rows of exactly `seq_len` tokens cut from the LM texts run together: no
    padding, every position is text (a sweep over length then measures length, not padding)."""
    need = batch_size * seq_len
    ids: list[int] = []
    for record in data.load_split(split):
        ids += tokenizer(data.lm_text(record))["input_ids"]
        if len(ids) >= need:
            break
    if len(ids) < need:
        raise ValueError(f"the {split} texts hold {len(ids)} tokens, fewer than {batch_size} x {seq_len}")
    input_ids = torch.tensor(ids[:need]).view(batch_size, seq_len)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Each transformer block's attention module (Llama's `self_attn`, GPT-2's `attn`, ...)."""
    found = []
    for block in models.transformer_blocks(model):
        for name, child in block.named_children():
            if "attn" in name.lower() or "attention" in type(child).__name__.lower():
                found.append(child)
                break
        else:
            raise ValueError(f"no attention module found in {type(block).__name__}")
    return found


def attention_kept_bytes(model: torch.nn.Module, batch: dict) -> int:
    """Bytes the attention modules keep for backward in one forward pass of the backbone (each
    storage once, parameters excluded): where eager attention keeps its L x L probabilities."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    inside = [0]

    def pack(t: torch.Tensor):
        s = t.untyped_storage()
        if inside[0] and s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    def enter(*_):
        inside[0] += 1

    def leave(*_):
        inside[0] -= 1

    hooks = []
    for module in attention_modules(model):
        hooks += [module.register_forward_pre_hook(enter), module.register_forward_hook(leave)]
    model.train()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        del out
    finally:
        for h in hooks:
            h.remove()
    return sum(storages.values())


def real_tokens(batches: list[dict]) -> int:
    return sum(int(b["attention_mask"].sum()) for b in batches)


def padding_share(batches: list[dict]) -> float:
    """Fraction of the positions in these batches that are padding (computed on, learned from never)."""
    total = sum(b["attention_mask"].numel() for b in batches)
    return 1 - real_tokens(batches) / total


def flops_per_real_token(model: torch.nn.Module, batches: list[dict]) -> float:
    """FLOPs of a training step's forward and backward over these batches, per real token."""
    def run():
        for b in batches:
            model(**b).loss.backward()
    flops = meter.count_flops(run)
    model.zero_grad(set_to_none=True)
    return flops / real_tokens(batches)


def summed_token_loss(model: torch.nn.Module, batches: list[dict]) -> float:
    """The loss summed over every predicted real token (the mean loss x its token count per
    batch): the same number whatever the batching, if the padding changes nothing. Dropout off
    (eval mode), so that two batchings draw no different random masks."""
    was_training, total = model.training, 0.0
    model.eval()
    try:
        with torch.no_grad():
            for b in batches:
                total += float(model(**b).loss) * int((b["labels"][:, 1:] != -100).sum())
    finally:
        model.train(was_training)
    return total


def attention_dropout(model: torch.nn.Module) -> float:
    """The attention-probability dropout of the model's config (Llama's `attention_dropout`,
    GPT-2's `attn_pdrop`); 0.0 where it has none."""
    config = model.config
    return float(getattr(config, "attention_dropout", 0.0) or getattr(config, "attn_pdrop", 0.0) or 0.0)
