"""One small, readable training loop with the cuts as switches.

A variant is the baseline plus one switch: `TrainConfig(..., grad_checkpointing=True)`.
Returns the learning curve (step, FLOPs, seconds, loss, metric) and where it hit the target.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from . import meter

OPTIMIZERS = ("adamw", "adamw8bit", "sgd")
AUTOCAST = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class TrainConfig:
    steps: int  # optimizer steps
    lr: float = 5e-5
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes) | sgd
    weight_decay: float = 0.0
    autocast: str | None = None  # None | "bf16" | "fp16" (fp16 needs CUDA)
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_checkpointing: bool = False  # recompute activations in backward (HF models)
    compile: bool = False  # torch.compile the model
    eval_every: int | None = None  # steps between evaluations (None: only at the end)
    target: float | None = None  # stop once the evaluation metric reaches this
    max_grad_norm: float | None = 1.0  # clip gradients at this norm, or None for no clipping
    seed: int = 0
    count_flops: bool = True  # count FLOPs of one step per batch shape (FlopCounterMode)
    progress: bool = True  # tqdm bar

    def __post_init__(self) -> None:
        if self.steps < 1 or self.grad_accum < 1:
            raise ValueError("steps and grad_accum must be >= 1")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.autocast not in AUTOCAST:
            raise ValueError(f"autocast must be one of {list(AUTOCAST)}, got {self.autocast!r}")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError("eval_every must be >= 1 or None")


@dataclass(frozen=True)
class CurvePoint:
    step: int
    flops: int  # cumulative training FLOPs (evaluation excluded)
    seconds: float  # cumulative training seconds (evaluation excluded)
    loss: float  # training loss of this step
    metric: float | None  # evaluation metric, where evaluated at this step


@dataclass
class TrainResult:
    points: list[CurvePoint] = field(default_factory=list)
    eval_seconds: float = 0.0
    flops_per_step: int | None = None
    state_bytes: dict[str, int] = field(default_factory=dict)  # measured at the last step
    steps_to_target: int | None = None
    flops_to_target: int | None = None
    seconds_to_target: float | None = None

    @property
    def final_metric(self) -> float | None:
        evaluated = [p.metric for p in self.points if p.metric is not None]
        return evaluated[-1] if evaluated else None

    def first_reaching(self, target: float) -> CurvePoint | None:
        """The first evaluated point at or above `target`; None if the run never reached it."""
        return next((p for p in self.points if p.metric is not None and p.metric >= target), None)

    @property
    def train_seconds(self) -> float:
        return self.points[-1].seconds if self.points else 0.0

    @property
    def total_flops(self) -> int:
        return self.points[-1].flops if self.points else 0

    def frame(self):
        import pandas as pd

        return pd.DataFrame([dataclasses.asdict(p) for p in self.points])


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def default_loss(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ModuleNotFoundError("optimizer='adamw8bit' needs bitsandbytes (in requirements.txt)") from None
        return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def autocast_context(cfg: TrainConfig, device: torch.device):
    if cfg.autocast is None:
        return contextlib.nullcontext()
    if cfg.autocast == "fp16" and device.type != "cuda":
        raise RuntimeError("autocast='fp16' needs a CUDA GPU; on CPU use autocast='bf16' or None")
    return torch.autocast(device.type, dtype=AUTOCAST[cfg.autocast])


def enable_checkpointing(model: torch.nn.Module, *, reentrant: bool = False) -> None:
    """Recompute each block's activations in backward instead of storing them (HF models).
    Non-reentrant (the default) works with frozen inputs (LoRA) without extra hooks; 02 turns
    reentrant on to show the trap."""
    kwargs = {"use_reentrant": reentrant}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        raise TypeError(f"{type(model).__name__} has no activation_checkpointing_enable(); "
                        f"wrap its blocks with torch.utils.checkpoint yourself")
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False


def prepare(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """Apply the model-level switches; returns the module to call (compiled or not)."""
    if cfg.grad_checkpointing:
        enable_checkpointing(model)
    return torch.compile(model) if cfg.compile else model


def _flops_of_step(model, batch, loss_fn, precision) -> int:
    """FLOPs of forward + backward on this batch, counted on the eager module, grads restored."""
    saved = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    with precision():
        flops = meter.count_flops(lambda: loss_fn(model, batch).backward())
    for p, g in zip(model.parameters(), saved):
        p.grad = g
    return flops


def train(model: torch.nn.Module, batches: Iterator[dict], cfg: TrainConfig, *,
          evaluate: Callable[[torch.nn.Module], float] | None = None,
          loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] = default_loss,
          higher_is_better: bool = True,
          optimizer_factory: Callable[[list, float], torch.optim.Optimizer] | None = None,
          autocast: Callable[[], contextlib.AbstractContextManager] | None = None) -> TrainResult:
    """Train `model` for `cfg.steps` optimizer steps on `batches` (an endless iterator).

    optimizer_factory: a function of the trainable parameters and cfg.lr that returns the optimizer
    (e.g. `lambda params, lr: bnb.optim.AdamW8bit(params, lr=lr)`), in place of cfg.optimizer;
    autocast: a function that returns the context each forward pass runs in (e.g.
    `lambda: torch.autocast("cpu", dtype=torch.bfloat16)`), in place of cfg.autocast.
    """
    from tqdm.auto import tqdm

    if autocast is not None and cfg.autocast is not None:
        raise ValueError("pass either autocast= (a context factory) or cfg.autocast, not both")
    torch.manual_seed(cfg.seed)
    device = model_device(model)
    precision = autocast or (lambda: autocast_context(cfg, device))
    step_module = prepare(model, cfg)
    if optimizer_factory is None:
        optimizer = make_optimizer(model.parameters(), cfg)
    else:
        optimizer = optimizer_factory([p for p in model.parameters() if p.requires_grad], cfg.lr)
    model.train()
    result, flops, seconds = TrainResult(), 0, 0.0
    flops_by_shape: dict[tuple, int] = {}
    bar = tqdm(range(1, cfg.steps + 1), desc="train", disable=not cfg.progress, leave=False)
    for step in bar:
        micro = [{k: v.to(device) for k, v in next(batches).items()} for _ in range(cfg.grad_accum)]
        if cfg.count_flops:
            for b in micro:
                shape = tuple(tuple(v.shape) for v in b.values())
                if shape not in flops_by_shape:
                    flops_by_shape[shape] = _flops_of_step(model, b, loss_fn, precision)
                flops += flops_by_shape[shape]
        meter.synchronize()
        start = time.perf_counter()
        total_loss = 0.0
        for b in micro:
            with precision():
                loss = loss_fn(step_module, b) / cfg.grad_accum
            loss.backward()
            total_loss += loss.item()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        if step == cfg.steps:
            result.state_bytes = meter.state_bytes(model, optimizer)
        optimizer.zero_grad(set_to_none=True)
        meter.synchronize()
        seconds += time.perf_counter() - start
        metric = None
        due = cfg.eval_every is not None and step % cfg.eval_every == 0
        if evaluate is not None and (due or step == cfg.steps):
            t0 = time.perf_counter()
            metric = float(evaluate(model))
            model.train()
            result.eval_seconds += time.perf_counter() - t0
        result.points.append(CurvePoint(step, flops, seconds, total_loss, metric))
        bar.set_postfix(loss=f"{total_loss:.3f}", **({"metric": f"{metric:.3f}"} if metric is not None else {}))
        reached = metric is not None and cfg.target is not None and (
            metric >= cfg.target if higher_is_better else metric <= cfg.target)
        if reached and result.steps_to_target is None:
            result.steps_to_target, result.flops_to_target, result.seconds_to_target = step, flops, seconds
            break
    result.flops_per_step = next(iter(flops_by_shape.values()), None) if flops_by_shape else None
    return result
