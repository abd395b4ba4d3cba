"""A review classifier fine-tuned in a few seconds, for lessons that start from a trained model
(06 prunes and quantizes it). The model is `distill.EncoderClassifier`: the encoder (MiniLM by
default, truncated to the profile's depth) with an attention-pooling head, which learns the task
in tens of steps where a [CLS]-pooler head needs hundreds. One recipe, so every lesson that needs
"a trained classifier" gets the same one.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import data, evaluation, models, profiles
from .lessons.distill import EncoderClassifier
from .train import TrainConfig, TrainResult, train


@dataclass
class FineTuned:
    model: EncoderClassifier
    tokenizer: object
    accuracy: float  # on the `test` split's first n_eval reviews (the target was checked on `val`)
    result: TrainResult
    test_batches: list[dict]  # the batches `accuracy` was measured on (reuse them for variants)
    train_set: dict[str, torch.Tensor]  # the encoded training reviews (for recovery fine-tuning)


def finetune(*, profile: str | None = None, encoder: str | None = None, layers: int | None = None,
             max_steps: int | None = None, lr: float = 1e-4, seed: int = 0) -> FineTuned:
    """Fine-tune the encoder + head on the review training split until the validation accuracy
    reaches the profile's target (checked every `eval_every` steps), at most `max_steps`
    (default 4 x the profile's train_steps); sizes from the profile."""
    p = profiles.get(profile)
    layers = p.encoder_layers if layers is None else layers
    backbone, tokenizer = models.load(encoder or models.default_encoder(), task="encoder", layers=layers)
    encode = lambda split, n: data.encode_classification(tokenizer, data.load_split(split, n), p.cls_seq_len)  # noqa: E731
    train_set, val, test = encode("train", p.n_train), encode("val", p.n_eval), encode("test", p.n_eval)
    model = EncoderClassifier(backbone, seed=seed)
    model.calibrate({k: v[:256] for k, v in train_set.items()})
    val_batches = data.eval_batches(val, 64)
    cfg = TrainConfig(steps=max_steps or 4 * p.train_steps, lr=lr, seed=seed, eval_every=p.eval_every,
                      target=p.target_accuracy, progress=False)
    result = train(model, data.batches(train_set, p.batch_size, seed=seed), cfg,
                   evaluate=lambda m: evaluation.accuracy(m, val_batches))
    test_batches = data.eval_batches(test, 64)
    return FineTuned(model.eval(), tokenizer, evaluation.accuracy(model, test_batches), result,
                     test_batches, train_set)
