"""Distillation (08): the teacher, the vocabulary bookkeeping and the training loop around it.

The distillation loss and the student's construction (a copy of the teacher with fewer blocks
and a trimmed embedding table) are written in the notebook; this module fine-tunes the teacher,
finds the tokens the domain uses, computes the teacher's soft targets once, picks a temperature
from them, and trains a student the notebook built with the loss the notebook wrote:

    teacher = distill.fine_tune(encoder, tokenizer, records, ...).model
    vocab = distill.domain_vocabulary(tokenizer, texts, seq_len)       # the tokens the domain uses
    targets = distill.soft_targets(teacher, train_set)                 # teacher logits, once
    T = distill.soft_temperature(targets)                              # soft enough to teach
    distill.train_student(student, vocab.remap(train_set), targets, kd_loss, steps=..., ...)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .. import data, probe
from ..evaluation import eval_mode
from ..probe import Head


class EncoderClassifier(nn.Module):
    """Any transformers encoder + an attention-pooling head (costlab.probe.Head), trained end
    to end. Learns the review task in tens of steps where a [CLS]-pooler head needs hundreds:
    the pooled [CLS] state of a sentence-embedding model like MiniLM starts out uninformative."""

    def __init__(self, encoder: nn.Module, *, hidden: int = 64, seed: int = 0):
        super().__init__()
        self.encoder = encoder
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # BERT's [CLS] pooler: unused here, so not counted or run
        torch.manual_seed(seed)
        self.head = Head(encoder.config.hidden_size, hidden)

    def states(self, input_ids, attention_mask) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    @torch.no_grad()
    def calibrate(self, encoded: dict[str, torch.Tensor]) -> "EncoderClassifier":
        """Standardize the head's inputs with this encoder's states on `encoded` (a sample of
        the training set): a new or shortened encoder has its own output statistics."""
        with eval_mode(self):
            self.head.calibrate(self.states(encoded["input_ids"], encoded["attention_mask"]), encoded["attention_mask"])
        return self

    def forward(self, input_ids, attention_mask, labels=None) -> SequenceClassifierOutput:
        return self.head(self.states(input_ids, attention_mask), attention_mask, labels)


@dataclass(frozen=True)
class FineTuned:
    model: EncoderClassifier
    head_flops: int  # the encoder's one pass over the training set + the head's training
    tune_flops: int  # end-to-end fine-tuning


def fine_tune(encoder: nn.Module, tokenizer, records: list[dict], *, seq_len: int, batch_size: int,
              head_steps: int, steps: int, head_lr: float = 3e-3, lr: float = 1e-4, seed: int = 0,
              freeze_embeddings: bool = True) -> FineTuned:
    """Fine-tune `encoder` + an attention-pooling head on labelled reviews, in two phases
    ("linear probe, then fine-tune", Kumar et al. 2022):

    1. the head alone, on the encoder's token states computed once (costlab.probe): a
       randomly initialised head trained end to end at a small learning rate learns slowly,
       and at a large one it wrecks the pretrained encoder;
    2. everything, `steps` steps at the small learning rate `lr`, from that head.
    freeze_embeddings: leave the word-embedding table (half of MiniLM) as pretrained; AdamW's
    update of 11.7M rows would cost more than the rest of the step on a CPU.
    """
    from ..train import TrainConfig, train

    feats, encoder_flops = probe.feature_sets(encoder, tokenizer, {"train": records}, seq_len=seq_len)
    head = probe.build_head(feats["train"], seed=seed)
    with probe.one_thread():
        probed = train(head, data.batches(feats["train"], batch_size, seed=seed),
                       TrainConfig(steps=head_steps, lr=head_lr, seed=seed, progress=False))
    model = EncoderClassifier(encoder)
    model.head = head
    if freeze_embeddings:
        encoder.get_input_embeddings().weight.requires_grad_(False)
    encoded = data.encode_classification(tokenizer, records, seq_len)
    tuned = train(model, data.batches(encoded, batch_size, seed=seed + 1),
                  TrainConfig(steps=steps, lr=lr, seed=seed, progress=False))
    return FineTuned(model, encoder_flops + probed.total_flops, tuned.total_flops)


@dataclass(frozen=True)
class DomainVocabulary:
    """The encoder's token ids the domain's texts use, mapped to compact rows 0..n-1."""
    token_ids: torch.Tensor  # original id of each kept row, sorted
    lookup: torch.Tensor  # original id -> kept row; ids never seen map to the [UNK] row

    def __len__(self) -> int:
        return len(self.token_ids)

    def remap(self, encoded: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {**encoded, "input_ids": self.lookup[encoded["input_ids"]]}

    def unknown_share(self, encoded: dict[str, torch.Tensor]) -> float:
        """Share of real (non-padding) tokens the trimmed vocabulary cannot read."""
        real = encoded["attention_mask"].bool()
        known = torch.zeros(len(self.lookup), dtype=torch.bool)
        known[self.token_ids] = True
        return float((~known[encoded["input_ids"]])[real].float().mean())


def domain_vocabulary(tokenizer, texts: list[str], seq_len: int) -> DomainVocabulary:
    """Every token id the texts use (plus the special tokens), from the tokenizer itself."""
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len)
    ids = {i for row in enc["input_ids"] for i in row}
    specials = {tokenizer.unk_token_id, tokenizer.pad_token_id, *tokenizer.all_special_ids}
    ids |= {i for i in specials if i is not None}
    token_ids = torch.tensor(sorted(ids))
    # [UNK] where the tokenizer has one (BERT); byte-level tokenizers (GPT-2) have no unknown
    # token, so an unseen id falls back to the padding row.
    fallback = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
    lookup = torch.full((len(tokenizer),), int((token_ids == fallback).nonzero()[0, 0]), dtype=torch.long)
    lookup[token_ids] = torch.arange(len(token_ids))
    return DomainVocabulary(token_ids, lookup)


@torch.no_grad()
def soft_targets(teacher: nn.Module, encoded: dict[str, torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """The teacher's logits on every example, computed once (offline distillation)."""
    with eval_mode(teacher):
        out = []
        for batch in data.eval_batches(encoded, batch_size):
            batch.pop("labels", None)
            out.append(teacher(**batch).logits)
    return torch.cat(out)


def median_confidence(logits: torch.Tensor, temperature: float = 1.0) -> float:
    """Median over examples of the top class's probability at `temperature`."""
    return float(torch.softmax(logits.double() / temperature, -1).max(-1).values.median())


def soft_temperature(teacher_logits: torch.Tensor, *, confidence: float = 0.9) -> float:
    """The temperature at which the teacher's median top-class probability is `confidence`.

    Soft targets teach only where they are soft: "when the soft targets have high entropy, they
    provide much more information per training case than hard targets" (Hinton et al. 2015). How
    high T must be depends on the teacher's logit scale, which fine-tuning sets: with two classes,
    p = sigmoid(margin / T), so a median logit margin of 44 still reads 0.99998 at T = 4, one-hot.
    """
    classes = teacher_logits.shape[-1]
    if not 1 / classes < confidence < 1:
        raise ValueError(f"confidence must be between 1/{classes} (a coin toss) and 1, got {confidence}")
    if median_confidence(teacher_logits) <= confidence:
        return 1.0  # already soft enough: T=1 is the teacher's own probabilities
    low, high = 0.0, 12.0  # log T: e^12 flattens any logits a trained model produces
    if median_confidence(teacher_logits, math.exp(high)) > confidence:
        raise ValueError("the teacher's logits are too large to soften; check the teacher")
    for _ in range(60):  # bisection: confidence falls as T rises
        middle = (low + high) / 2
        low, high = (middle, high) if median_confidence(teacher_logits, math.exp(middle)) > confidence else (low, middle)
    return math.exp(high)


def train_student(student: EncoderClassifier, examples: dict[str, torch.Tensor], targets: torch.Tensor,
                  loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], *, steps: int,
                  lr: float, batch_size: int, seed: int, calibration: int = 64):
    """Train `student` on `examples` (already in its vocabulary) with the teacher's logits
    `targets` beside each example: loss(student_logits, teacher_logits, labels) per batch.
    Returns costlab.train.TrainResult.

    calibration: training examples whose states set the head's standardization first; a student
    whose last block is one of the teacher's earlier ones has its own output statistics.
    """
    from ..train import TrainConfig, train

    student.calibrate({k: v[:calibration] for k, v in examples.items()})
    batches = data.batches({**examples, "teacher_logits": targets}, batch_size, seed=seed)

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "teacher_logits")}
        return loss(model(**inputs).logits, batch["teacher_logits"], batch["labels"])
    return train(student, batches, TrainConfig(steps=steps, lr=lr, seed=seed, progress=False), loss_fn=loss_fn)


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers: what the model weighs in memory and on disk."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
