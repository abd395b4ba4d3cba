"""Quality measures: classifier accuracy, LM eval loss / perplexity, LM sentiment accuracy."""
from __future__ import annotations

import contextlib
import math

import torch

from .data import LABEL_WORDS, lm_prompt


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module):
    """Evaluation mode (no dropout) inside the block, the model's own mode restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@torch.no_grad()
def classification_scores(model: torch.nn.Module, batches: list[dict]) -> dict:
    """Accuracy (argmax logit == label) and mean cross-entropy of a sequence classifier, in one
    pass, with the number of examples."""
    with eval_mode(model):
        device = next(model.parameters()).device
        correct, loss_sum, n = 0, 0.0, 0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits
            correct += (logits.argmax(-1) == labels).sum().item()
            loss_sum += torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
            n += len(labels)
    return {"accuracy": correct / n, "eval_loss": loss_sum / n, "n": n}


def accuracy(model: torch.nn.Module, batches: list[dict]) -> float:
    """Share of examples whose argmax logit is the label (a sequence classifier)."""
    return classification_scores(model, batches)["accuracy"]


@torch.no_grad()
def eval_loss(model: torch.nn.Module, batches: list[dict]) -> float:
    """Mean token loss over labelled (non-padding) tokens."""
    with eval_mode(model):
        device = next(model.parameters()).device
        loss_sum = tokens = 0.0
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            n = (batch["labels"][:, 1:] != -100).sum().item()
            loss_sum += model(**batch).loss.item() * n
            tokens += n
    return loss_sum / tokens


def accuracy_variance(accuracy: float, n: int) -> float:
    """Sampling variance of an accuracy measured on n examples, Agresti-Coull: the rate taken as
    (correct + 2) / (n + 4), because the plain p(1-p)/n is zero at 0% and 100%, as if a perfect
    score could not be luck."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    rate = (accuracy * n + 2) / (n + 4)
    return rate * (1 - rate) / (n + 4)


def accuracy_gap_se(a: float, b: float, n: int) -> float:
    """Standard error of the difference of two accuracies, each measured on the same n examples
    (taken as independent: an upper-side estimate)."""
    return math.sqrt(accuracy_variance(a, n) + accuracy_variance(b, n))


def perplexity(loss: float) -> float:
    return math.exp(loss)


@torch.no_grad()
def lm_sentiment_accuracy(model: torch.nn.Module, tokenizer, records: list[dict]) -> float:
    """Does the causal LM score ' positive' above ' negative' after the prompt? (LM task quality)"""
    with eval_mode(model):
        device = next(model.parameters()).device
        word_ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in LABEL_WORDS]
        correct = 0
        for record in records:
            ids = tokenizer(lm_prompt(record), return_tensors="pt")["input_ids"].to(device)
            logits = model(input_ids=ids).logits[0, -1]
            correct += int(int(logits[word_ids].argmax()) == record["label"])
    return correct / len(records)
