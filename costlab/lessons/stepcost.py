"""What one training step costs, and how to measure it honestly (notebook 00).

    st = stepcost.setup(layers=p.lm_layers, seq_len=p.seq_len, batch_size=p.batch_size)
    step = stepcost.train_step(st)                       # forward, backward, AdamW, zero_grad
    flops = stepcost.count_step_flops(st)                # FlopCounterMode, attention included
    split = stepcost.param_split(st.model)               # which parameters multiply each token
    stepcost.flops_terms(flops, split, st)               # 6·N·D and the gap terms, as a table
    stepcost.memory_anatomy(st)                          # predicted beside measured, by part

The traps are measured too, never used as measurements: a step timed without warm-up or
without device sync, a memory peak read in a process that ran earlier work, and tracemalloc,
which cannot see torch's allocator. `fresh_process_step` is the worker that `costlab.isolate`
runs in a new process for the honest memory peak.
"""
from __future__ import annotations

import contextlib
import gc
import tracemalloc
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .. import data, estimate, hardware, meter, models, profiles

LR = 1e-4  # AdamW learning rate of the measured step (the value does not change its cost)


@dataclass
class StepSetup:
    """A causal LM, its AdamW optimizer and one fixed batch: everything a step touches."""
    model: nn.Module
    tokenizer: object
    optimizer: torch.optim.Optimizer
    batch: dict[str, torch.Tensor]

    @property
    def tokens(self) -> int:
        """D of one step: every position the model computes on, padding included (padding
        costs the same FLOPs as text and teaches nothing)."""
        return self.batch["input_ids"].numel()

    @property
    def text_tokens(self) -> int:
        return int(self.batch["attention_mask"].sum())

    @property
    def seq_len(self) -> int:
        return self.batch["input_ids"].shape[1]


def setup(model: str | None = None, *, layers: int | None, seq_len: int, batch_size: int,
          seed: int = 0) -> StepSetup:
    """Load the causal LM (`COSTLAB_LM` or smollm2) and fix one batch of the review LM task."""
    torch.manual_seed(seed)
    lm, tokenizer = models.load(model or models.default_lm(), task="causal-lm", layers=layers)
    lm.to(hardware.training_device()).train()
    records = data.load_split("train", batch_size)
    batch = {k: v.to(hardware.training_device()) for k, v in data.encode_lm(tokenizer, records, seq_len).items()}
    return StepSetup(lm, tokenizer, torch.optim.AdamW(lm.parameters(), lr=LR), batch)


def train_step(st: StepSetup) -> Callable[[], None]:
    """One optimizer step on the fixed batch. Nothing in it reads a value back to Python
    (no `loss.item()`), so on a GPU the call returns before the device has finished: that is
    what makes the no-sync trap visible."""
    def step() -> None:
        st.model(**st.batch).loss.backward()
        st.optimizer.step()
        st.optimizer.zero_grad(set_to_none=True)
    return step


# --- FLOPs ---------------------------------------------------------------------------------

@contextlib.contextmanager
def attention_implementation(model: nn.Module, name: str | None):
    """Run with another attention kernel (e.g. "eager"), then switch back. None: as loaded."""
    before = model.config._attn_implementation
    if name is not None and name != before:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if name is not None and name != before:
            model.set_attn_implementation(before)


def count_step_flops(st: StepSetup, *, attention: str | None = "eager") -> int:
    """FLOPs of forward + backward of one step (the AdamW update adds ~10 FLOPs per parameter,
    elementwise, which FlopCounterMode does not count).

    attention="eager" runs attention as plain matmuls, which the counter sees. torch's fused
    CPU attention kernel has no FLOP formula registered, so with the model's default ("sdpa")
    on a CPU the attention FLOPs are silently missing from the count."""
    with attention_implementation(st.model, attention):
        flops = meter.count_flops(lambda: st.model(**st.batch).loss.backward())
    st.optimizer.zero_grad(set_to_none=True)
    return flops


@dataclass(frozen=True)
class ParamSplit:
    """Which parameters cost FLOPs for every token (each tensor counted once)."""
    total: int  # every parameter; a tied embedding/head matrix once
    lookup: int  # embedding tables read by index (token, position): no multiply, no FLOPs
    matmul: int  # weights multiplied with every token: the blocks' linear layers + the LM head
    head: int  # the LM head's part of `matmul` (vocab x hidden)
    tied: bool  # the head reuses the token-embedding matrix

    @property
    def non_embedding(self) -> int:
        """Kaplan et al.'s N: no embedding and no unembedding (LM head) matrix."""
        return self.total - self.lookup - (0 if self.tied else self.head)

    @property
    def blocks(self) -> int:
        """The linear layers of the transformer blocks (what `matmul` holds besides the head)."""
        return self.matmul - self.head


def param_split(model: nn.Module) -> ParamSplit:
    from transformers.pytorch_utils import Conv1D

    unique = {p.data_ptr(): p.numel() for p in model.parameters()}
    lookup = {m.weight.data_ptr(): m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding)}
    # Linear modules are counted per module, not per tensor: a tied head is an nn.Linear whose
    # weight is the embedding matrix, and it is multiplied with every token all the same.
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, Conv1D)))
    getter = getattr(model, "get_output_embeddings", None)  # an encoder or a plain module: no LM head
    head_module = getter() if getter is not None else None
    head = head_module.weight.numel() if head_module is not None else 0
    tied = head_module is not None and head_module.weight.data_ptr() in lookup
    return ParamSplit(sum(unique.values()), sum(lookup.values()), matmul, head, tied)


def attention_flops(model: nn.Module, *, seq_len: int, tokens: int) -> int:
    """FLOPs of the attention scores: QKᵀ and scores·V, 2·2·s·d_attn per token per layer forward,
    x3 with backward. Kernels compute the full s x s square even under a causal mask."""
    shape = estimate.ModelShape.from_model(model)
    head_dim = getattr(model.config, "head_dim", None) or shape.hidden // shape.heads
    return 12 * shape.layers * seq_len * shape.heads * head_dim * tokens


def flops_terms(counted: int, split: ParamSplit, st: StepSetup):
    """Counted FLOPs beside 6·N·D for three choices of N, and the counted total split into terms."""
    import pandas as pd

    d = st.tokens
    attention = attention_flops(st.model, seq_len=st.seq_len, tokens=d)
    choices = pd.DataFrame([
        {"N": "all parameters", "params": split.total},
        {"N": "non-embedding (Kaplan et al.)", "params": split.non_embedding},
        {"N": "multiplied per token: blocks + LM head", "params": split.matmul},
    ]).assign(**{"6·N·D": lambda f: 6 * f["params"] * d})
    choices["counted / 6·N·D"] = (counted / choices["6·N·D"]).round(3)
    terms = pd.DataFrame([
        {"term": "blocks' linear layers: 6·N_blocks·D", "flops": 6 * split.blocks * d},
        {"term": ("LM head, tied to the embedding" if split.tied else "LM head") + ": 6·N_head·D",
         "flops": 6 * split.head * d},
        {"term": "attention scores (QKᵀ, scores·V): 12·L·s·d_attn·D", "flops": attention},
        {"term": "embedding lookups (an index, no multiply)", "flops": 0},
        {"term": "sum of the terms", "flops": 6 * split.matmul * d + attention},
        {"term": "counted by FlopCounterMode", "flops": counted},
    ])
    terms["share of counted"] = (terms["flops"] / counted).round(4)
    return choices.set_index("N"), terms.set_index("term")


def context_sweep(model: str | None = None, *, layers: int | None, seq_lens: list[int],
                  attention: str = "eager"):
    """Counted FLOPs beside 6·N·D (N = blocks + LM head) at several context lengths, one sequence
    each, and the context where the rule misses by 15%. Nothing is computed: the model is built
    on the meta device (shapes, no numbers), so a full-depth model at a long context takes a
    second to count."""
    import pandas as pd
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(models.resolve(model or models.default_lm()))
    if layers is not None:
        models.keep_config_layers(config, range(layers))
    config._attn_implementation = attention
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config)
    split = param_split(lm)
    longest = getattr(config, "max_position_embeddings", None) or max(seq_lens)
    rows = []
    for seq in [s for s in seq_lens if s <= longest]:  # no longer than the model's positions
        ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
        counted = meter.count_flops(lambda: lm(input_ids=ids, labels=ids).loss.backward())
        lm.zero_grad(set_to_none=True)
        six_nd = 6 * split.matmul * seq
        rows.append({"seq_len": seq, "counted": counted, "6·N·D": six_nd,
                     "attention term": attention_flops(lm, seq_len=seq, tokens=seq),
                     "counted / 6·N·D": round(counted / six_nd, 3)})
    return pd.DataFrame(rows).set_index("seq_len"), split, context_where_rule_misses(lm, split)


def context_where_rule_misses(model: nn.Module, split: ParamSplit, tolerance: float = 0.15) -> int:
    """The context length s at which the attention term reaches `tolerance` x 6·N·D:
    12·L·s·d_attn = tolerance·6·N, solved for s (N = blocks + LM head)."""
    per_s = attention_flops(model, seq_len=1, tokens=1)  # 12·L·d_attn
    return int(tolerance * 6 * split.matmul / per_s)


# --- memory --------------------------------------------------------------------------------

def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules())


def logits_bytes(st: StepSetup) -> int:
    """The LM head's vocabulary-sized activation: the log-softmax of the fp32 logits (tokens x
    vocab x 4 bytes), kept for the loss's backward. Korthikanti et al.'s formula covers the
    blocks only; with a 49k-token vocabulary this one tensor outweighs several blocks."""
    return st.tokens * st.model.get_output_embeddings().weight.shape[0] * 4


def predicted_parts(st: StepSetup) -> dict[str, float]:
    """Bytes by part, from the model's shapes alone (nothing run): weights, grads and AdamW
    states exactly; activations from Korthikanti et al.'s per-block formula plus the logits."""
    states = estimate.state_bytes(st.model, "adamw")
    batch, seq = st.batch["input_ids"].shape
    blocks = estimate.activation_bytes(
        estimate.ModelShape.from_model(st.model), seq_len=seq, batch=batch, precision="fp32",
        dropout=has_dropout(st.model), attention_scores=st.model.config._attn_implementation == "eager")
    return {"weights": states.weights_bytes, "grads": states.grad_bytes,
            "optimizer": states.optimizer_state_bytes, "activations_blocks": blocks,
            "activations_logits": logits_bytes(st)}


def measured_parts(st: StepSetup) -> dict[str, int]:
    """Bytes by part, measured on a real step: the tensors autograd saves during the forward
    pass (each storage once, parameters excluded), then the weights, gradients and AdamW states
    summed tensor by tensor after backward and the optimizer step."""
    activations = meter.saved_tensor_bytes(lambda: st.model(**st.batch).loss)
    st.model(**st.batch).loss.backward()
    st.optimizer.step()
    states = meter.state_bytes(st.model, st.optimizer)
    st.optimizer.zero_grad(set_to_none=True)
    return {**states, "activations": activations}


def memory_anatomy(predicted: dict[str, float], measured: dict[str, int]):
    """Predicted beside measured, one row per part (bytes)."""
    import pandas as pd

    rows = [("weights", predicted["weights"], measured["weights"]),
            ("gradients", predicted["grads"], measured["grads"]),
            ("AdamW states (m, v, step)", predicted["optimizer"], measured["optimizer"]),
            ("activations saved for backward",
             predicted["activations_blocks"] + predicted["activations_logits"], measured["activations"])]
    frame = pd.DataFrame(rows, columns=["part", "predicted_bytes", "measured_bytes"]).set_index("part")
    frame["measured / predicted"] = (frame["measured_bytes"] / frame["predicted_bytes"]).round(3)
    frame.loc["total"] = [frame["predicted_bytes"].sum(), frame["measured_bytes"].sum(),
                          round(frame["measured_bytes"].sum() / frame["predicted_bytes"].sum(), 3)]
    return frame


def fresh_process_step(*, model: str | None = None, layers: int | None = None, seq_len: int | None = None,
                       batch_size: int | None = None, steps: int = 2, profile: str | None = None) -> dict:
    """Worker for `costlab.isolate`: load the model, reset the peak, run `steps` training steps.

    The peak isolate adds is then the steps' own (weights, gradients, AdamW states, activations
    and backward's temporaries) above the imported libraries, with the load's transient copies
    left out. Sizes default to the profile's."""
    p = profiles.get(profile)
    st = setup(model, layers=p.lm_layers if layers is None else layers, seq_len=seq_len or p.seq_len,
               batch_size=batch_size or p.batch_size)
    gc.collect()
    rss_after_load = meter.rss_bytes()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    reset = meter.reset_peak_rss()
    step = train_step(st)
    for _ in range(steps):
        step()
    meter.synchronize()
    states = estimate.state_bytes(st.model, "adamw")
    return {"metrics": {"total_params": models.count_params(st.model),
                        "model_size_bytes": states.weights_bytes,
                        "optimizer_state_bytes": states.optimizer_state_bytes},
            "extra": {"rss_after_load_bytes": rss_after_load, "peak_reset_after_load": reset,
                      "steps": steps, "seq_len": st.seq_len, "batch_size": st.batch["input_ids"].shape[0],
                      "predicted_states_bytes": states.weights_bytes + states.grad_bytes
                      + states.optimizer_state_bytes}}


# --- the traps -----------------------------------------------------------------------------

def peak_in_this_process(step: Callable[[], None]) -> dict[str, int | None]:
    """Two readings of a peak taken inside a process that already ran other work.

    never_reset_bytes: the process's high-water mark as it stands (CPU: VmHWM, which counts the
      imports, every model loaded and every earlier run; GPU: the allocator's peak since start).
    reset_net_bytes: what `Meter()` reports around one more step, after resetting the peak. On
      a CPU it is net of the RSS at entry, and memory freed by earlier steps is reused without
      growing the RSS, so the step's real footprint hides in what is already resident.
    """
    never_reset = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else meter.peak_rss_bytes()
    with meter.Meter() as m:
        step()
    return {"never_reset_bytes": never_reset, "reset_net_bytes": m.result.peak_mem_bytes}


def tracemalloc_blind_spot(st: StepSetup) -> dict[str, int]:
    """One step with a fresh AdamW (which allocates its m and v) under tracemalloc.

    tracemalloc traces Python's own allocator; torch allocates tensor memory in C++, so
    tracemalloc's peak misses the gradients and optimizer states the step creates. Shown as a
    trap only: never report a tracemalloc figure as a model's memory."""
    fresh = torch.optim.AdamW(st.model.parameters(), lr=LR)
    st.optimizer.zero_grad(set_to_none=True)
    tracemalloc.start()
    try:
        st.model(**st.batch).loss.backward()
        fresh.step()
        _, traced_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    created = meter.state_bytes(st.model, fresh)
    fresh.zero_grad(set_to_none=True)
    return {"tracemalloc_peak_bytes": traced_peak, "torch_bytes_created": created["grads"] + created["optimizer"]}


def per_step_price(run: meter.Measurement, step_sec: float) -> tuple[dict[str, float | None], list[str]]:
    """Energy, $ and CO2 of one step of `step_sec` seconds. Where a meter read energy over the
    metered block (NVML on a GPU), its average power x the step time; elsewhere the power table
    x the step time, labelled estimated (and $ and CO2 come from tables, so they are estimates)."""
    energy = None
    if run.energy_j is not None and "energy_j" not in run.estimated and run.wall_sec > 0:
        energy = run.energy_j / run.wall_sec * step_sec
    return meter.price(step_sec, energy)
