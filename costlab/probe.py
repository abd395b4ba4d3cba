"""A small classifier head trained on a frozen encoder's features: the cheap learner for lessons
that need many training runs (07: orders x data sets x seeds; 09: dozens of search trials).

    feats, flops = probe.feature_sets(encoder, tokenizer, {"train": recs, "val": val}, seq_len=32)
    head = probe.build_head(feats["train"], hidden=64, seed=0)   # standardized on train
    train(head, data.batches(feats["train"], 8), cfg)      # costlab.train, unchanged

The encoder runs once per example (its forward FLOPs are counted and reported as a fixed,
shared cost); every run after that trains only the head (attention pooling + a small MLP) on
the stored token states, so a run costs about a millisecond per step on a CPU and noisy
learning-dynamics effects can be measured over several seeds. Any encoder works (BERT, GPT-2,
Llama...): the features are its last hidden states.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from . import data, meter


@contextlib.contextmanager
def one_thread():
    """Run a head's training on one thread. Its tensors are small: a second intra-op thread
    saves little on a free machine, and on a shared one each op waits for both threads to be
    scheduled (measured: 10x slower wall time with 2 threads on 2 busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@torch.no_grad()
def token_states(encoder: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """The encoder's last hidden state of every token: (examples, seq_len, hidden)."""
    encoder.eval()
    out = []
    for i in range(0, len(encoded["input_ids"]), batch_size):
        ids, mask = encoded["input_ids"][i:i + batch_size], encoded["attention_mask"][i:i + batch_size]
        out.append(encoder(input_ids=ids, attention_mask=mask).last_hidden_state.float())
    return torch.cat(out)


def feature_sets(encoder: nn.Module, tokenizer, splits: dict[str, list[dict]], *,
                 seq_len: int) -> tuple[dict[str, dict[str, torch.Tensor]], int]:
    """The encoder's token states for each split, computed once.

    Returns ({split: {"hidden", "attention_mask", "labels"}}, the encoder's forward FLOPs):
    each split is a dict that costlab.data.batches / eval_batches and the head take as they are.
    """
    out, flops = {}, 0
    for name, records in splits.items():
        enc = data.encode_classification(tokenizer, records, seq_len)
        holder = {}
        flops += meter.count_flops(lambda: holder.setdefault("h", token_states(encoder, enc)))
        out[name] = {"hidden": holder["h"], "attention_mask": enc["attention_mask"], "labels": enc["labels"]}
    return out, flops


def with_labels(split: dict[str, torch.Tensor], records: list[dict]) -> dict[str, torch.Tensor]:
    """The same features with other labels (e.g. the noisy-label copy of the same reviews)."""
    labels = torch.tensor([r["label"] for r in records])
    if len(labels) != len(split["labels"]):
        raise ValueError(f"{len(labels)} labels for {len(split['labels'])} examples")
    return {**split, "labels": labels}


class Head(nn.Module):
    """Standardize -> attention pooling over the token states -> a small MLP -> 2 logits.

    A learned score per token decides which tokens the review's verdict rests on (the opinion
    words, "not", the clause after "but"); mean pooling would dilute them among the template
    words. Returns what a transformers classifier returns (loss, logits), so costlab.train and
    costlab.evaluation drive it unchanged.
    """

    def __init__(self, dim: int, hidden: int = 64, dropout: float = 0.0):
        super().__init__()
        # Per-dimension mean and std of the encoder's states (set by `calibrate`). Hidden states
        # differ by a few hundredths on most dimensions while a few carry large offsets: the
        # head learns many times faster on standardized inputs (StandardScaler's reason).
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.score = nn.Linear(dim, 1)
        self.mlp = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 2))

    @torch.no_grad()
    def calibrate(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> "Head":
        """Set the standardization from token states (real tokens only, padding excluded)."""
        real = hidden[attention_mask.bool()]
        self.mean.copy_(real.mean(0))
        self.std.copy_(real.std(0).clamp(min=1e-6))
        return self

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None) -> SequenceClassifierOutput:
        hidden = (hidden - self.mean) / self.std
        weights = self.score(hidden).squeeze(-1).masked_fill(attention_mask == 0, float("-inf")).softmax(-1)
        logits = self.mlp((weights.unsqueeze(-1) * hidden).sum(1))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_head(train_split: dict[str, torch.Tensor], *, hidden: int = 64, dropout: float = 0.0,
               seed: int = 0) -> Head:
    """A freshly initialised head (same seed, same weights), standardized on the training split."""
    torch.manual_seed(seed)
    head = Head(train_split["hidden"].shape[-1], hidden, dropout)
    return head.calibrate(train_split["hidden"], train_split["attention_mask"])


def eval_flops(model: nn.Module, batches: list[dict]) -> int:
    """FLOPs of one evaluation pass (forward only) over `batches`."""
    def run():
        with torch.no_grad():
            for b in batches:
                model(**{k: v for k, v in b.items() if k != "labels"})
    return meter.count_flops(run)
