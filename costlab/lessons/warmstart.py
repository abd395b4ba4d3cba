"""Warm start (notebook 03): the data, the small classifier and the training runs around an
embedding that the notebook builds (random, or rows copied from a pretrained table).

    setup = warmstart.prepare(profile, tokenizer)            # the reviews, tokenized, once
    run = warmstart.run(setup, make_embedding, seed=0, ...)  # one variant, one seed

`make_embedding(seed)` returns the nn.Embedding to start from; the notebook writes it (the cut).
Everything else is initialised from `seed` identically in every variant, so two variants with
one seed differ by the embedding alone.

The vocabulary keeps only the rows that the data ever looks up. That is an exact shortcut, not
an approximation: a row never looked up gets no gradient, so AdamW (weight decay 0) never moves
it and it never affects an output. It keeps each step cheap on a CPU.
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .. import data, evaluation, models, probe, profiles, reviews
from ..train import TrainConfig, train


@dataclass(frozen=True)
class Vocabulary:
    """The encoder's token ids our texts use, mapped to compact row numbers 0..n-1."""
    token_ids: torch.Tensor  # encoder token id of each compact row, sorted
    full_size: int  # rows of the encoder's own table

    @classmethod
    def from_texts(cls, tokenizer, texts: list[str], seq_len: int) -> "Vocabulary":
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len)
        ids = {i for row in enc["input_ids"] for i in row}
        return cls(torch.tensor(sorted(ids)), len(tokenizer))

    def __len__(self) -> int:
        return len(self.token_ids)

    def remap(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encoder token ids -> compact rows (every id must be in the vocabulary)."""
        lookup = torch.full((max(self.full_size, int(self.token_ids.max()) + 1),), -1, dtype=torch.long)
        lookup[self.token_ids] = torch.arange(len(self))
        rows = lookup[encoded["input_ids"]]
        if (rows < 0).any():
            raise ValueError("a text uses tokens outside the vocabulary; build it from every split you use")
        return {**encoded, "input_ids": rows}


class SmallClassifier(nn.Module):
    """Word embedding -> LayerNorm -> a 1-D convolution over `width` neighbouring tokens -> GELU
    -> max over real tokens -> linear head: Kim (2014)'s text CNN, the classic home of
    warm-started word vectors. Takes and returns what transformers models do, so
    costlab.train and costlab.evaluation drive it unchanged."""

    def __init__(self, embed: nn.Embedding, *, channels: int, width: int = 3):
        super().__init__()
        dim = embed.embedding_dim
        self.embed = embed
        self.norm = nn.LayerNorm(dim)  # as BERT normalises its embeddings before the blocks
        self.conv = nn.Conv1d(dim, channels, width, padding="same")
        self.head = nn.Linear(channels, 2)

    def forward(self, input_ids, attention_mask, labels=None):
        tokens = self.norm(self.embed(input_ids)).transpose(1, 2)  # (batch, dim, tokens)
        h = nn.functional.gelu(self.conv(tokens))
        h = h.masked_fill(attention_mask.unsqueeze(1) == 0, float("-inf")).amax(-1)
        logits = self.head(h)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


@dataclass
class Setup:
    """What every variant shares: our vocabulary and the encoded splits."""
    vocab: Vocabulary
    train_set: dict[str, torch.Tensor]
    val_batches: list[dict]
    heldout_batches: list[dict]  # test_heldout: opinion words never seen in training
    heldout_records: list[dict]
    tokenizer: object = field(repr=False)


def prepare(profile: profiles.Profile, tokenizer, *, n_train: int | None = None) -> Setup:
    """Tokenize train / val / test_heldout with the encoder's tokenizer; n_train labelled
    reviews (default the profile's)."""
    splits = {"train": data.load_split("train", n_train or profile.n_train),
              "val": data.load_split("val", profile.n_eval),
              "test_heldout": data.load_split("test_heldout", profile.n_eval)}
    texts = [r["text"] for records in splits.values() for r in records]
    vocab = Vocabulary.from_texts(tokenizer, texts, profile.cls_seq_len)
    enc = {s: vocab.remap(data.encode_classification(tokenizer, records, profile.cls_seq_len))
           for s, records in splits.items()}
    eval_batch = 4 * profile.batch_size  # evaluation has no backward pass: bigger batches are fine
    return Setup(vocab, enc["train"], data.eval_batches(enc["val"], eval_batch),
                 data.eval_batches(enc["test_heldout"], eval_batch), splits["test_heldout"], tokenizer)


@dataclass(frozen=True)
class Run:
    """One variant, one seed: its learning curves and where it reached the target."""
    seed: int
    curve: tuple[tuple[int, float], ...]  # (step, validation accuracy) at each evaluation
    heldout_curve: tuple[tuple[int, float], ...]  # (step, held-out-vocabulary accuracy)
    target_split: str  # "val" or "heldout": the curve steps_to_target is read from
    steps_to_target: int | None  # first evaluated step at or above the target; None: not reached
    flops_to_target: int | None
    flops_per_step: int
    trainable_params: int
    val_accuracy: float  # at the end of the budget
    heldout_accuracy: float  # test_heldout, at the end of the budget
    train_seconds: float
    state_bytes: dict  # measured at the last step: weights, grads, optimizer (AdamW moments)
    model: SmallClassifier = field(repr=False, compare=False)  # as trained, for the analyses


def first_at(curve, target: float) -> int | None:
    """The first evaluated step whose accuracy is at or above `target` (None: never)."""
    return next((step for step, acc in curve if acc >= target), None)


def run(setup: Setup, make_embedding, *, seed: int, steps: int, lr: float, batch_size: int,
        eval_every: int, target: float, target_split: str = "val", channels: int = 128,
        width: int = 3) -> Run:
    """Train one variant for the whole budget (no early stop, so every variant is measured after
    the same number of steps); the target is read off the `target_split` curve.

    make_embedding(seed) -> nn.Embedding is called first; the layers above it are then
    initialised from `seed`, the same in every variant. One intra-op thread: the tensors are
    small (see `probe.one_thread`)."""
    if target_split not in ("val", "heldout"):
        raise ValueError(f"target_split must be 'val' or 'heldout', got {target_split!r}")
    embed = make_embedding(seed)
    torch.manual_seed(seed)
    model = SmallClassifier(embed, channels=channels, width=width)
    heldout = []

    def evaluate(m):
        heldout.append(evaluation.accuracy(m, setup.heldout_batches))
        return evaluation.accuracy(m, setup.val_batches)

    cfg = TrainConfig(steps=steps, lr=lr, eval_every=eval_every, seed=seed, progress=False)
    with probe.one_thread():
        result = train(model, data.batches(setup.train_set, batch_size, seed=seed), cfg, evaluate=evaluate)
    evaluated = [pt for pt in result.points if pt.metric is not None]
    curve = tuple((pt.step, pt.metric) for pt in evaluated)
    heldout_curve = tuple((pt.step, acc) for pt, acc in zip(evaluated, heldout))
    hit = first_at(curve if target_split == "val" else heldout_curve, target)
    flops = {pt.step: pt.flops for pt in evaluated}
    return Run(seed, curve, heldout_curve, target_split, hit, flops[hit] if hit else None,
               result.flops_per_step, models.count_params(model, trainable_only=True),
               curve[-1][1], heldout_curve[-1][1], result.train_seconds, dict(result.state_bytes), model)


def median_steps(runs: list[Run], budget: int) -> tuple[float, bool]:
    """Median steps to target over seeds, and whether any run never reached it. Such a run
    counts as the whole budget, so the median is then a lower bound of the true one."""
    values = [r.steps_to_target if r.steps_to_target is not None else budget for r in runs]
    return statistics.median(values), any(r.steps_to_target is None for r in runs)


def split_heldout_words(setup: Setup) -> list[str]:
    """Held-out opinion words that the encoder's tokenizer cuts into pieces ("abysmal" ->
    "ab", "##ys", "##mal"): their copied rows are those of fragments, not of the word."""
    return [w for w in reviews.POSITIVE_HELDOUT + reviews.NEGATIVE_HELDOUT
            if len(setup.tokenizer.tokenize(" " + w)) > 1]


def heldout_has_split_word(setup: Setup) -> torch.Tensor:
    """Per held-out review: does it contain a held-out opinion word that the tokenizer splits?"""
    split = set(split_heldout_words(setup))
    return torch.tensor([bool(split & set(re.findall(r"[a-z]+", r["text"].lower())))
                         for r in setup.heldout_records])


@torch.no_grad()
def correct(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """Per example: is the argmax prediction the label?"""
    model.eval()
    out = [model(**{k: v for k, v in b.items() if k != "labels"}).logits.argmax(-1) == b["labels"]
           for b in batches]
    return torch.cat(out)


def row_drift(run: Run, rows: torch.Tensor) -> float:
    """How far training moved the copied rows, relative to their size (0 for a frozen table)."""
    moved = run.model.embed.weight.detach() - rows
    return float(moved.norm() / rows.norm())
