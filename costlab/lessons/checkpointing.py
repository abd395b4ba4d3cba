"""Gradient checkpointing, measured (notebook 04): what the forward pass leaves behind for
backward, with and without recomputation; that losses and gradients do not change; the
step-time price; and the largest batch that fits a memory budget. The notebook writes the
checkpointing itself (a variant is a function model -> model); this module measures it.

Why a module of its own: the bytes kept for backward under checkpointing are not all visible to
`meter.saved_tensor_bytes`. torch's checkpoint installs its own saved-tensor hooks inside each
block (so the inner tensors are dropped and recomputed) and keeps the block's *input* alive in
its closure instead. Counting honestly means adding those inputs back, which
`kept_for_backward` does with a forward pre-hook on each block.
"""
from __future__ import annotations

import math

import torch

from .. import data, hardware, isolate, meter, models, profiles
from ..train import enable_checkpointing


def set_checkpointing(model: torch.nn.Module, on: bool) -> None:
    """Switch recomputation on or off on a Hugging Face model (the same module, both ways)."""
    if on:
        enable_checkpointing(model)
        return
    for name in ("activation_checkpointing_disable", "gradient_checkpointing_disable"):
        if hasattr(model, name):  # transformers 5 name first; the old one warns
            getattr(model, name)()
            return


def is_checkpointing(model: torch.nn.Module) -> bool:
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(model, name):
            return bool(getattr(model, name))
    return False


def kept_for_backward(model: torch.nn.Module, batch: dict, *, blocks_only: bool = False,
                      inputs_kept: bool | None = None) -> int:
    """Bytes the forward pass keeps alive for backward (each storage once, parameters excluded).

    blocks_only=True: only what the transformer blocks keep (what checkpointing changes and what
    Korthikanti's formula predicts); runs the backbone without the LM head, which is faster.
    Otherwise the whole model with its loss: embeddings, blocks, final norm, head, loss.
    inputs_kept: whether a checkpoint holds each block's input (None: read the transformers
    switch; pass True where the blocks run under torch.utils.checkpoint some other way).
    """
    if inputs_kept is None:
        inputs_kept = is_checkpointing(model)
    blocks = models.transformer_blocks(model)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}
    depth = [0]  # > 0 while inside a block

    def keep(t: torch.Tensor) -> None:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()

    def pack(t: torch.Tensor):
        if depth[0] > 0 or not blocks_only:
            keep(t)
        return t

    def enter(module, args, kwargs):
        depth[0] += 1
        x = args[0] if args else kwargs.get("hidden_states")
        if inputs_kept and torch.is_tensor(x):
            keep(x)  # held by the checkpoint to rerun the block in backward

    def leave(module, args, output):
        depth[0] -= 1

    hooks = [b.register_forward_pre_hook(enter, with_kwargs=True) for b in blocks]
    hooks += [b.register_forward_hook(leave) for b in blocks]
    was_training = model.training
    model.train()  # checkpointing only acts in training mode
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if blocks_only:
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                out = model.base_model(**inputs)
            else:
                out = model(**batch).loss
        del out
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return sum(storages.values())


def loss_and_grads(model: torch.nn.Module, batch: dict, *, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """One forward + backward from a fixed seed (dropout draws the same masks each time)."""
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss = model(**batch).loss
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def same_result(model: torch.nn.Module, batch: dict, *, on=None, off=None,
                rtol: float = 1e-4, atol: float = 1e-5) -> dict:
    """Loss and every gradient with checkpointing on vs off (allclose).

    on / off: functions model -> model that switch it on / off in place (default the
    transformers switch); the model is left off. The tolerance covers float summation order
    only: recomputation runs the same kernels on the same inputs, so any real bug (a block
    skipped, a wrong RNG state) shows far above it.
    """
    on = on or (lambda m: set_checkpointing(m, True))
    off = off or (lambda m: set_checkpointing(m, False))
    off(model)
    loss_off, grads_off = loss_and_grads(model, batch)
    on(model)
    loss_on, grads_on = loss_and_grads(model, batch)
    off(model)
    grad_close = grads_off.keys() == grads_on.keys() and all(
        torch.allclose(grads_off[n], grads_on[n], rtol=rtol, atol=atol) for n in grads_off)
    return {"loss_off": float(loss_off), "loss_on": float(loss_on),
            "loss_allclose": bool(torch.allclose(loss_off, loss_on, rtol=rtol, atol=atol)),
            "grads_allclose": bool(grad_close), "n_grads": len(grads_off),
            "max_grad_diff": max(float((grads_off[n] - grads_on[n]).abs().max()) for n in grads_off)}


def training_step(model: torch.nn.Module, batch: dict, optimizer: torch.optim.Optimizer):
    """One optimizer step as the timing sees it: forward, backward, update, free the grads."""
    def step() -> None:
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def lm_batch(tokenizer, batch_size: int, seq_len: int, *, split: str = "train") -> dict:
    """`batch_size` review texts of the LM task, padded to `seq_len` tokens (every batch costs the same)."""
    return data.encode_lm(tokenizer, data.load_split(split, batch_size), seq_len)


def _peak_since_reset(rss_start: int | None) -> int | None:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    hwm = meter.peak_rss_bytes()
    return None if hwm is None or rss_start is None else hwm - rss_start


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:
        meter.reset_peak_rss()


def training_peak(cut=None, *, model: str | None = None, layers: int | None = None, seq_len: int | None = None,
                  batch_sizes: list[int] | None = None, profile: str | None = None) -> dict:
    """Fresh-process worker for `costlab.isolate`: the peak memory of AdamW steps at each batch size.

    cut: the notebook's variant, a function model -> model applied after loading (None: store
    every activation, the baseline).

    Lighter than `workloads.lm_training` (no evaluation, no FLOP count, no checkpoint file):
    only what a training step holds. At the first size two steps, because the optimizer's
    states first exist in step 2, where a real run peaks; at each larger size one step (the
    states exist by then), with the peak reset before it. Two sizes give the measured slope:
    the bytes each extra example adds, transient tensors included. Peaks are net of the
    process's memory before the model was built (CPU) or the CUDA allocator's peak.
    """
    p = profiles.get(profile)
    layers = p.lm_layers if layers is None else layers
    seq_len, sizes = seq_len or p.seq_len, sorted(batch_sizes or [p.batch_size])
    device = hardware.training_device()
    rss_start = meter.rss_bytes()
    torch.manual_seed(0)
    lm, tokenizer = models.load(model or models.default_lm(), task="causal-lm", layers=layers)
    lm.to(device)
    if cut is not None:
        lm = cut(lm)
    lm.train()
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-5)
    peaks = []
    for i, size in enumerate(sizes):
        batch = {k: v.to(device) for k, v in lm_batch(tokenizer, size, seq_len).items()}
        if i:
            _reset_peak()
        for _ in range(2 if i == 0 else 1):
            training_step(lm, batch, optimizer)()
        peaks.append({"batch_size": size, "peak_mem_bytes": _peak_since_reset(rss_start)})
        del batch
    return {"metrics": {"total_params": models.count_params(lm)},
            "peak_mem_bytes": peaks[0]["peak_mem_bytes"],  # at the first (the profile's) batch size
            "peak_mem_kind": "cuda_allocator_peak" if device.type == "cuda" else "process_peak_rss_net",
            "extra": {"layers": lm.config.num_hidden_layers, "seq_len": seq_len, "peaks": peaks,
                      "checkpointing": is_checkpointing(lm)}}


def fresh_peaks(cuts: dict, **kwargs) -> dict[str, dict]:
    """`training_peak` for each named variant (name -> the notebook's cut, or None), each in a
    fresh process of its own, one after the other: on a GPU none crowds another out of device
    memory, and on CPU three at once only fight over the cores (measured on 2 cores: 44 s at
    once against 36 s in turn at smoke).
    """
    return {name: isolate.isolate(training_peak, cut, **kwargs) for name, cut in cuts.items()}


def uses_dropout(model: torch.nn.Module) -> bool:
    """Whether training draws dropout masks (which the forward pass keeps for backward)."""
    probs = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    probs += [getattr(model.config, k, 0.0) or 0.0 for k in ("attention_dropout", "attn_pdrop")]
    return any(float(v) > 0 for v in probs)


def stores_attention_scores(model: torch.nn.Module) -> bool:
    """Eager attention keeps the a·s² softmax for backward; SDPA / FlashAttention kernels do not."""
    return getattr(model.config, "_attn_implementation", "eager") == "eager"


def peak_line(peaks: list[dict]) -> tuple[float, float]:
    """(fixed bytes, bytes per example) of the line through the measured peaks at two batch
    sizes: a step's peak grows linearly in the batch (weights, grads and optimizer states are
    fixed; activations and the transient tensors of backward scale with it)."""
    (b1, p1), (b2, p2) = [(x["batch_size"], x["peak_mem_bytes"]) for x in (peaks[0], peaks[-1])]
    if b2 == b1:
        raise ValueError("two different batch sizes are needed for a slope")
    slope = (p2 - p1) / (b2 - b1)
    return p1 - slope * b1, slope


def largest_batch(budget_bytes: float, fixed_bytes: float, bytes_per_example: float) -> int:
    """The largest batch whose peak, fixed + batch x bytes_per_example, stays within the budget."""
    if bytes_per_example <= 0:
        raise ValueError(f"bytes_per_example must be > 0, got {bytes_per_example:.0f} "
                         f"(peaks that do not grow with the batch: measurement noise?)")
    return max(0, math.floor((budget_bytes - fixed_bytes) / bytes_per_example))
