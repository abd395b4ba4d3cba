"""Variants described as data, run in a fresh process by `costlab.isolate` (fair memory peaks).

`lm_training` is the causal-LM fine-tuning job that 02 and 14 measure: the baseline is full
fine-tuning in fp32 with AdamW, and each keyword takes a change written in the notebook.
"""
from __future__ import annotations

import contextlib
import statistics
import tempfile
from pathlib import Path

import torch

from . import data, evaluation, hardware, meter, models, profiles
from .train import TrainConfig, default_loss, train


def apply_lora(model, *, r: int, alpha: int | None = None, dropout: float = 0.0, targets=None):
    """Wrap a model with LoRA adapters on its attention query/value projections (from the model)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout,
                        target_modules=targets or models.lora_targets(model))
    return get_peft_model(model, config)


def keep_4bit_trainable(model) -> None:
    """bitsandbytes repacks 4-bit weights for fast CPU inference the first time a layer runs in
    eval mode without grad, and its backward through the repacked kernel then yields no input
    gradient: LoRA adapters upstream silently stop learning. Turn that repacking off."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def release_checkpoint_mapping(model) -> None:
    """Give the non-quantized weights of a 4-bit model their own memory. On CPU, transformers maps
    the safetensors file and keeps the weights it did not convert as views of that mapping, so
    the fp32 pages it read to quantize the blocks stay resident (and counted in RSS) for as long
    as the embedding holds the file open: QLoRA's saving would not show. Copying the few
    non-quantized tensors lets the mapping, and those pages, go."""
    for param in model.parameters():
        if param.__class__.__name__ != "Params4bit":
            param.data = param.data.clone()


def checkpoint_bytes(model) -> int:
    """Bytes on disk of what you would keep after training: the adapter alone for LoRA."""
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        return sum(f.stat().st_size for f in Path(tmp).rglob("*.safetensors"))


def bf16_checkpoint(name_or_path: str):
    """The checkpoint with its weights stored in bf16, converted once into the user cache (as
    checkpoints on the hub usually ship). A bf16 base read from an fp32 file maps all the fp32
    pages while it converts them, so the process's peak would hold both copies; read from a bf16
    file it is mapped as it will be kept. Hub ids and checkpoints already in bf16 pass through.
    Call it before a measured run: converting inside one would put the conversion in its peak."""
    import hashlib
    import json

    source = models.resolve(name_or_path)
    if not isinstance(source, Path):
        return name_or_path
    config = json.loads((source / "config.json").read_text())
    if (config.get("dtype") or config.get("torch_dtype")) == "bfloat16":
        return source
    tag = hashlib.sha1(str(Path(source).resolve()).encode()).hexdigest()[:8]  # two folders, two copies

    def write(folder: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with models._quiet_transformers():
            AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).save_pretrained(folder)
            AutoTokenizer.from_pretrained(source).save_pretrained(folder)

    return models.converted_once(models.cache_dir() / f"{source.name}-{tag}-bf16", write, what="bf16 copy")


def _apply(cut, model):
    """Apply the notebook's cut: one function model -> model, or several in order."""
    for fn in (cut if isinstance(cut, (list, tuple)) else [cut]):
        model = fn(model)
    return model


def build_lm(name: str, *, layers: int | None, device: torch.device | None = None, cut=None,
             quantization_config=None, dtype: torch.dtype | None = None, attn_implementation: str | None = None):
    """The model of one variant: loaded (quantized where `quantization_config` says, its weights
    in `dtype`, attention as `attn_implementation` names it), then the notebook's `cut`.

    cut: a function written in the notebook, model -> model (e.g. `get_peft_model(...)`), or a
    list of them applied in order; quantization_config: loads the base quantized (e.g. the
    notebook's NF4 `BitsAndBytesConfig`), with the CPU fixes below applied before `cut` sees it.
    dtype=torch.bfloat16 reads the weights from a bf16 copy of the checkpoint (`bf16_checkpoint`).
    """
    device = device or torch.device("cpu")
    if dtype == torch.bfloat16:
        name = str(bf16_checkpoint(name))
    lm, tokenizer = models.load(name, task="causal-lm", layers=layers, dtype=dtype or torch.float32,
                                quantization_config=quantization_config)
    if attn_implementation is not None:
        lm.set_attn_implementation(attn_implementation)
    if quantization_config is None:
        lm.to(device)
    else:
        if device.type == "cpu":
            release_checkpoint_mapping(lm)
        keep_4bit_trainable(lm)
    if cut is not None:
        lm = _apply(cut, lm)
    return lm, tokenizer


def padded_batches(tokenizer, records: list[dict], seq_len: int, batch_size: int, seed: int):
    """The kit's training batches: every review padded (or cut) to `seq_len` tokens, reshuffled
    every epoch. A notebook passes its own function of the same arguments as `batches=`."""
    return data.batches(data.encode_lm(tokenizer, records, seq_len), batch_size, seed=seed)


def lm_training(cut=None, *, quantization_config=None, model: str | None = None, layers: int | None = None,
                seq_len: int | None = None, batch_size: int | None = None, steps: int | None = None, lr: float = 1e-4,
                dtype: torch.dtype | None = None, attn_implementation: str | None = None,
                optimizer_factory=None, autocast=None, loss=None, batches=None, compile=None,
                seed: int = 0, profile: str | None = None, measure_checkpoint: bool = True,
                quality_records: int = 0, eval_before: bool = True, eval_examples: int | None = None) -> dict:
    """Fine-tune the causal LM on the review LM task; return measured cost and quality.

    The baseline is full fine-tuning in fp32 with AdamW at `lr`; each argument below is a change
    written in the notebook:
    cut: a function model -> model applied after loading (or a list of them, in order);
    quantization_config: how to load the base (QLoRA's NF4); dtype: the weights' dtype at load;
    attn_implementation: "eager" or "sdpa" (transformers' attention kernels);
    optimizer_factory: (trainable params, lr) -> optimizer (default AdamW);
    autocast: () -> the context each forward pass runs in (e.g. bf16 autocast);
    loss: (model, batch) -> scalar loss (default the model's own, `model(**batch).loss`);
    batches: (tokenizer, records, seq_len, batch_size, seed) -> endless batches (default
    `padded_batches`); compile: a function applied to the model after its FLOPs and saved bytes
    are counted eagerly (it compiles at the first training step, counted in compile_sec).

    Sizes default to the profile's. Returns {"metrics": {...}, "quality": {...}, "extra": {...}}.
    eval_before=False skips the untuned model's evaluation (the same for every variant of one
    model: measure it once, not in each fresh process); eval_examples: validation reviews per
    evaluation (default the profile's n_eval).
    """
    p = profiles.get(profile)
    layers = p.lm_layers if layers is None else layers
    seq_len, batch_size = seq_len or p.seq_len, batch_size or p.batch_size
    steps = steps or (p.warmup_steps + p.timed_steps)
    device = hardware.training_device()
    torch.manual_seed(seed)
    lm, tokenizer = build_lm(model or models.default_lm(), layers=layers, device=device, cut=cut,
                             quantization_config=quantization_config, dtype=dtype,
                             attn_implementation=attn_implementation)
    val_enc = data.encode_lm(tokenizer, data.load_split("val", eval_examples or p.n_eval), seq_len)
    val_batches = data.eval_batches(val_enc, batch_size)
    loss_before = evaluation.eval_loss(lm, val_batches) if eval_before else None
    stream = Positions((batches or padded_batches)(tokenizer, data.load_split("train", p.n_train),
                                                    seq_len, batch_size, seed), device)
    sample = stream.peek()
    loss_fn = loss or default_loss
    precision = autocast or contextlib.nullcontext
    # Training mode, as in training: transformers checkpoints only when `model.training` is
    # True, and from_pretrained returns a model in eval mode.
    lm.train()
    with precision():
        saved = meter.saved_tensor_bytes(lambda: loss_fn(lm, sample))
    flops_first = _count_flops(lm, sample, loss_fn, precision)  # eager, before any compilation
    if compile is not None:
        compile(lm)
    cfg = TrainConfig(steps=steps, lr=lr, seed=seed, progress=False, count_flops=False)
    result = train(lm, stream, cfg, loss_fn=loss_fn, optimizer_factory=optimizer_factory, autocast=autocast)
    step_times = _step_times(result)
    timed = step_times[p.warmup_steps:] or step_times
    loss_after = evaluation.eval_loss(lm, val_batches)
    trainable = models.count_params(lm, trainable_only=True)
    positions = stream.positions / stream.drawn  # per step, padding included (bucketing cuts it)
    metrics = {
        "step_time_sec": statistics.median(timed),
        "compile_sec": (step_times[0] - statistics.median(timed)) if compile is not None else None,
        "trainable_params": trainable, "total_params": models.count_params(lm),
        "grad_bytes": result.state_bytes["grads"], "activation_bytes": saved,
        # counted on the first batch, scaled to the run's mean positions per step (bucketed
        # batches vary in width; padded ones do not, and there this is the count itself)
        "flops": int(flops_first * positions / sample["input_ids"].numel()),
        "optimizer_state_bytes": result.state_bytes["optimizer"],
        "checkpoint_bytes": checkpoint_bytes(lm) if measure_checkpoint else None,
        "throughput_samples_per_sec": batch_size / statistics.median(timed),
    }
    quality = {"eval_loss": loss_after, "perplexity": evaluation.perplexity(loss_after)}
    if quality_records:
        quality["accuracy"] = evaluation.lm_sentiment_accuracy(
            lm, tokenizer, data.load_split("val", quality_records))
    priced, estimated = meter.price(result.train_seconds)
    metrics.update(priced)
    return {"metrics": {k: v for k, v in metrics.items() if v is not None}, "quality": quality,
            "estimated": estimated,
            "extra": {"eval_loss_before": loss_before, "train_tokens": stream.real_tokens, "steps": steps,
                      "positions_per_step": positions, "real_tokens_per_step": stream.real_tokens / stream.drawn,
                      "layers": layers, "seq_len": seq_len, "batch_size": batch_size,
                      "train_seconds": result.train_seconds, "step_times_sec": step_times,
                      "device": hardware.detect().name}}


class Positions:
    """The training batches, counted as they are drawn: positions (padding included) and real
    tokens (attention mask 1), so a run reports what its batching cost. `peek` returns the first
    batch without using it up."""

    def __init__(self, batches, device: torch.device):
        self.batches, self.device = iter(batches), device
        self.first = None
        self.drawn = self.positions = self.real_tokens = 0

    def peek(self) -> dict:
        if self.first is None:
            self.first = {k: v.to(self.device) for k, v in next(self.batches).items()}
        return self.first

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch, self.first = (self.first, None) if self.first is not None else (next(self.batches), None)
        self.drawn += 1
        self.positions += batch["input_ids"].numel()
        self.real_tokens += int(batch["attention_mask"].sum())
        return batch


def _count_flops(lm, sample: dict, loss_fn, precision) -> int:
    """FLOPs of one step (forward and backward) on `sample`, counted on the eager modules; the
    gradients it leaves are cleared."""
    with precision():
        flops = meter.count_flops(lambda: loss_fn(lm, sample).backward())
    lm.zero_grad(set_to_none=True)
    return flops


def _step_times(result) -> list[float]:
    times, last = [], 0.0
    for point in result.points:
        times.append(point.seconds - last)
        last = point.seconds
    return times

