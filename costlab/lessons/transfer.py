"""Fine-tune, don't pretrain (notebook 01): the same encoder, pretrained or randomly initialized,
fine-tuned on the review set with the same recipe, raced to a target accuracy.

The notebook writes how each arm's model is built (a function `seed -> model`):

    def pretrained(seed): return AutoModelForSequenceClassification.from_pretrained(path, config=config)
    def scratch(seed):    return AutoModelForSequenceClassification.from_config(config)
    pre, scr = transfer.race_one_seed(race, seed, pretrained=pretrained, scratch=scratch, tokenizer=tok)

The pretrained arm runs to the target; the scratch arm then gets `race.budget_multiple` times
the FLOPs it spent. Everything else (data order, learning rate, batch, evaluation) is shared.
FLOPs are counted per step (FlopCounterMode) and summed; seconds exclude evaluation.
`PRETRAINING` holds published token counts for the bill that fine-tuning skips (6·N·D).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from .. import data, evaluation, hardware, models, profiles
from ..train import TrainConfig, TrainResult, train

EVAL_BATCH = 128  # examples per evaluation forward pass (evaluation is not timed or counted)


class MeanPoolClassifier(nn.Module):
    """An encoder, the mean of its last hidden states over the real tokens, a linear head.

    Mean pooling is how all-MiniLM-L6-v2 was trained (sentence-transformers). BERT's own
    classification head reads the [CLS] state through a pooler instead; in MiniLM truncated to
    two blocks that state barely differs from one review to the next, and fine-tuning takes
    hundreds of steps to get going. Returns what a transformers classifier returns (loss,
    logits), so costlab.train and costlab.evaluation drive it unchanged."""

    def __init__(self, encoder: nn.Module, *, num_labels: int = 2, seed: int = 0):
        super().__init__()
        self.encoder = encoder
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # unused here: neither run nor counted
        self.config = encoder.config
        torch.manual_seed(seed)  # the same head for the pretrained and the scratch encoder
        self.head = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids, attention_mask, labels=None, **_) -> SequenceClassifierOutput:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        logits = self.head((states * mask).sum(1) / mask.sum(1).clamp(min=1))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build(*, pretrained: bool, layers: int | None, seed: int = 0, model: str | None = None):
    """(classifier, tokenizer): the encoder (`COSTLAB_ENCODER` or MiniLM), pretrained weights or
    the same architecture drawn at random, with a mean-pooling head (the exercises' helper)."""
    encoder, tokenizer = models.load(model or models.default_encoder(), task="encoder", layers=layers,
                                     pretrained=pretrained, seed=seed)
    return MeanPoolClassifier(encoder, seed=seed), tokenizer


@dataclass(frozen=True)
class Race:
    """One recipe for both arms; sizes from the profile, `dataclasses.replace` for the knobs."""
    target: float  # validation accuracy to reach
    seeds: tuple[int, ...]  # one race (pretrained and scratch) per seed
    batch_size: int  # reviews per optimizer step
    max_steps: int  # the pretrained arm's step cap
    eval_every: int  # steps between validation evaluations
    layers: int | None  # encoder blocks kept (None: all)
    seq_len: int  # tokens per review
    n_train: int
    n_eval: int
    lr: float  # AdamW, both arms (constant, the model's own dropout)
    budget_multiple: float = 5.0  # scratch may spend this many times the pretrained FLOPs

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1 or self.budget_multiple < 1 or not self.seeds:
            raise ValueError("target in (0, 1], budget_multiple >= 1 and at least one seed")

    @classmethod
    def from_profile(cls, p: profiles.Profile, **overrides) -> "Race":
        race = cls(target=p.transfer_target, seeds=p.seeds[:p.transfer_seeds],
                   batch_size=p.transfer_batch_size, max_steps=p.transfer_max_steps, eval_every=p.eval_every,
                   layers=p.encoder_layers, seq_len=p.cls_seq_len, n_train=p.n_train, n_eval=p.n_eval,
                   lr=p.transfer_lr)
        return dataclasses.replace(race, **overrides)


@dataclass
class Arm:
    """One fine-tuning run and what it reached."""
    name: str  # "pretrained" or "scratch"
    seed: int
    result: TrainResult
    total_params: int
    accuracy: dict[str, float]  # final model on "val", "test" and "test_heldout"

    @property
    def reached(self) -> bool:
        return self.result.flops_to_target is not None

    @property
    def pretrained(self) -> bool:
        return self.name == "pretrained"


def _encoded(tokenizer, split: str, limit: int, seq_len: int) -> dict[str, torch.Tensor]:
    return data.encode_classification(tokenizer, data.load_split(split, limit), seq_len)


def run_arm(race: Race, make_model: Callable[[int], nn.Module], tokenizer, *, seed: int,
            name: str = "pretrained", steps: int | None = None, progress: bool = False) -> Arm:
    """Fine-tune `make_model(seed)` until the validation accuracy reaches the target or `steps`
    (default `race.max_steps`) run out; then measure the final model on val, test and test_heldout."""
    torch.manual_seed(seed)  # the new head's weights: the same draw for both arms
    model = make_model(seed)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # classifiers find the last real token by it
    model.to(hardware.training_device())  # train() follows the model's device
    train_set = _encoded(tokenizer, "train", race.n_train, race.seq_len)
    splits = {split: data.eval_batches(_encoded(tokenizer, split, race.n_eval, race.seq_len), EVAL_BATCH)
              for split in ("val", "test", "test_heldout")}
    cfg = TrainConfig(steps=steps or race.max_steps, lr=race.lr, eval_every=race.eval_every,
                      target=race.target, seed=seed, progress=progress)
    result = train(model, data.batches(train_set, race.batch_size, seed=seed), cfg,
                   evaluate=lambda m: evaluation.accuracy(m, splits["val"]))
    accuracy = {split: evaluation.accuracy(model, batches) for split, batches in splits.items()}
    return Arm(name, seed, result, models.count_params(model), accuracy)


def race_one_seed(race: Race, seed: int, *, pretrained: Callable[[int], nn.Module],
                  scratch: Callable[[int], nn.Module], tokenizer, progress: bool = False) -> tuple[Arm, Arm]:
    """The pretrained arm runs to the target; the scratch arm then gets `budget_multiple` times
    the FLOPs the pretrained arm spent (every step has the same shape and architecture, so the
    same FLOPs: the budget is a step count)."""
    pre = run_arm(race, pretrained, tokenizer, seed=seed, name="pretrained", progress=progress)
    spent = pre.result.flops_to_target or pre.result.total_flops
    steps = max(1, math.floor(race.budget_multiple * spent / pre.result.flops_per_step))
    scr = run_arm(race, scratch, tokenizer, seed=seed, name="scratch", steps=steps, progress=progress)
    if scr.result.flops_per_step != pre.result.flops_per_step:
        raise AssertionError("the two arms' steps should cost the same FLOPs")
    return pre, scr


def flops_ratio(pre: Arm, scratch: Arm) -> float:
    """How many times more FLOPs scratch needed to reach the target (inf: not within its budget)."""
    if not pre.reached:
        return 0.0
    if not scratch.reached:
        return math.inf
    return scratch.result.flops_to_target / pre.result.flops_to_target


def median(values: list[float]) -> float | None:
    import statistics

    return statistics.median(values) if values else None


def arm_record(arms: list[Arm]) -> dict:
    """One ledger record's values for one arm over its seeds: medians of the seeds that reached
    the target (a `*_to_target` is left out unless every seed reached it: no censored value is
    written as a measurement), FLOPs spent, and held-out-vocabulary accuracy as the quality."""
    reached = [a for a in arms if a.reached]
    metrics = {"flops": median([a.result.total_flops for a in arms]),
               "total_params": arms[0].total_params, "trainable_params": arms[0].total_params}
    if len(reached) == len(arms):
        metrics.update(flops_to_target=median([a.result.flops_to_target for a in arms]),
                       steps_to_target=median([a.result.steps_to_target for a in arms]),
                       seconds_to_target=median([a.result.seconds_to_target for a in arms]))
    extra = {"seeds": [a.seed for a in arms], "reached_target": [a.reached for a in arms],
             "steps_run": [a.result.points[-1].step for a in arms],
             "train_seconds": [a.result.train_seconds for a in arms],
             **{f"{split}_accuracy": [a.accuracy[split] for a in arms] for split in ("val", "test", "test_heldout")}}
    return {"metrics": metrics, "quality": {"accuracy": median([a.accuracy["test_heldout"] for a in arms])},
            "extra": extra}


def first_reaching(arm: Arm, threshold: float) -> int | None:
    """Cumulative training FLOPs at the arm's first evaluation at or above `threshold`."""
    point = arm.result.first_reaching(threshold)
    return point.flops if point else None


def saving_by_target(races: list[tuple[Arm, Arm]], thresholds: list[float]):
    """For lower bars than the race's target, from the same curves: FLOPs each arm needed (median
    over seeds; None: not reached within its run) and scratch / pretrained."""
    import pandas as pd

    rows = []
    for t in thresholds:
        pre = [first_reaching(p, t) for p, _ in races]
        scr = [first_reaching(s, t) for _, s in races]
        pre_med = median([f for f in pre if f is not None]) if all(f is not None for f in pre) else None
        scr_med = median([f for f in scr if f is not None]) if all(f is not None for f in scr) else None
        rows.append({"target": t, "pretrained FLOPs": pre_med, "scratch FLOPs": scr_med,
                     "scratch / pretrained": (scr_med / pre_med) if pre_med and scr_med else None})
    return pd.DataFrame(rows).set_index("target")


@dataclass(frozen=True)
class PublishedRun:
    """A pretraining run's size as published (not measured here)."""
    model: str
    params: float | None  # N as published; None: counted from the model we load
    tokens: float  # D, training tokens as published
    source: str


# Published token counts, for the 6·N·D bill of the pretraining that fine-tuning skips.
BERT_TOKENS = 128_000 * 1_000_000  # "256 sequences * 512 tokens = 128,000 tokens/batch for 1,000,000 steps"
PRETRAINING: tuple[PublishedRun, ...] = (
    PublishedRun("MiniLM (all-MiniLM-L6-v2's base)", None, BERT_TOKENS,
                 "distilled on BERT's corpus, English Wikipedia + BookCorpus (Wang et al. 2020, MiniLM, "
                 "section 4); D = BERT's published token count (Devlin et al. 2019, appendix A.2). The "
                 "teacher's own pretraining and its forward passes are left out: the real bill is larger"),
    PublishedRun("BERT-Base", 110e6, BERT_TOKENS, "Devlin et al. 2019 (BERT): 110M parameters, appendix A.2"),
    PublishedRun("Llama-2-7B", 7e9, 2e12, "Touvron et al. 2023 (Llama 2): 7B parameters, 2T tokens"),
)


def pretraining_bill(encoder_params: int, fine_tune_flops: float, flops_per_sec: float):
    """6·N·D of each published run, beside our measured fine-tune: how many of our fine-tunes it
    buys, and how long it would run at the FLOP rate this machine reached while fine-tuning."""
    import pandas as pd

    rows = []
    for run in PRETRAINING:
        n = run.params or encoder_params
        bill = 6 * n * run.tokens
        rows.append({"model": run.model, "N (params)": n, "D (tokens, published)": run.tokens,
                     "6·N·D (FLOPs, estimate)": bill, "x our fine-tune to target": bill / fine_tune_flops,
                     "years at this machine's measured rate": bill / flops_per_sec / (365.25 * 24 * 3600),
                     "source": run.source})
    return pd.DataFrame(rows).set_index("model")
