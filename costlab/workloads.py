"""Variants described as data, run in a fresh process by `costlab.isolate` (fair memory peaks).

`lm_training` is the causal-LM fine-tuning job that 00, 02, 04 and 13 measure: the baseline is
full fine-tuning in fp32 with AdamW, and each keyword switches on one cut.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from . import data, evaluation, hardware, meter, models, profiles
from .train import TrainConfig, enable_checkpointing, model_device, train


def apply_lora(model, *, r: int, alpha: int | None = None, dropout: float = 0.0, targets=None):
    """Wrap a model with LoRA adapters on its attention query/value projections (from the model)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout,
                        target_modules=targets or models.lora_targets(model))
    return get_peft_model(model, config)


def nf4_config():
    """QLoRA's 4-bit NormalFloat base with double quantization (bitsandbytes)."""
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=compute)


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


def compile_blocks(model) -> None:
    """Regional compilation: compile each transformer block in place. Identical blocks share one
    compiled graph, so compile time stops growing with depth (PyTorch's regional compilation
    recipe); the embedding, head and loss stay eager."""
    for block in models.transformer_blocks(model):
        block.compile()


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


def build_lm(name: str, *, layers: int | None, lora_r: int = 0, qlora: bool = False,
             base_dtype: str | None = None, device: torch.device | None = None,
             cut=None, quantization_config=None):
    """The model of one variant: full fine-tuning, LoRA, or LoRA on a 4-bit NF4 base (QLoRA).

    base_dtype="bf16" keeps the frozen base in bf16: weights that are never updated need no fp32
    master copy, and under bf16 autocast no 16-bit copy is made of them at each forward pass.
    Trained weights (full fine-tuning, the adapters) stay fp32, so it needs lora_r > 0.
    cut: a function written in the notebook, model -> model (e.g. `get_peft_model(...)`), applied
    after loading; quantization_config: loads the base quantized (e.g. the notebook's NF4
    `BitsAndBytesConfig`), with the CPU fixes below applied before `cut` sees it.
    """
    if (cut is not None or quantization_config is not None) and (lora_r or qlora or base_dtype):
        raise ValueError("pass either a notebook's cut (cut=, quantization_config=) or the switches "
                         "(lora_r=, qlora=, base_dtype=), not both")
    if base_dtype not in (None, "bf16"):
        raise ValueError(f"base_dtype must be None or 'bf16', got {base_dtype!r}")
    if base_dtype and not lora_r:
        raise ValueError("base_dtype='bf16' stores a frozen base: it needs lora_r > 0")
    if qlora and not lora_r:
        raise ValueError("qlora=True needs lora_r > 0 (QLoRA trains LoRA adapters on a 4-bit base)")
    device = device or torch.device("cpu")
    if base_dtype == "bf16":
        name = str(bf16_checkpoint(name))
    if qlora:
        quantization_config = nf4_config()
    lm, tokenizer = models.load(name, task="causal-lm", layers=layers,
                                dtype=torch.bfloat16 if base_dtype == "bf16" else torch.float32,
                                quantization_config=quantization_config)
    if quantization_config is None:
        lm.to(device)
    else:
        if device.type == "cpu":
            release_checkpoint_mapping(lm)
        keep_4bit_trainable(lm)
    if qlora and base_dtype is None:  # it casts every non-quantized weight to fp32, which a bf16 base avoids
        from peft import prepare_model_for_kbit_training

        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    if lora_r:
        lm = apply_lora(lm, r=lora_r)
    if cut is not None:
        lm = cut(lm)
    return lm, tokenizer


def lm_training(cut=None, *, quantization_config=None, model: str | None = None, layers: int | None = None,
                seq_len: int | None = None, batch_size: int | None = None, steps: int | None = None, lr: float = 1e-4,
                lora_r: int = 0, qlora: bool = False, grad_checkpointing: bool = False,
                autocast: str | None = None, optimizer: str = "adamw", compile: bool | str = False,
                seed: int = 0, profile: str | None = None, measure_checkpoint: bool = True,
                quality_records: int = 0, eval_before: bool = True,
                eval_examples: int | None = None, base_dtype: str | None = None) -> dict:
    """Fine-tune the causal LM on the review LM task; return measured cost and quality.

    cut: the notebook's variant, a function model -> model applied after loading (None: full
    fine-tuning, the baseline); quantization_config: how to load the base (QLoRA's NF4).

    Sizes default to the profile's. Returns {"metrics": {...}, "quality": {...}, "extra": {...}}.
    eval_before=False skips the untuned model's evaluation (the same for every variant of one
    model: measure it once, not in each fresh process); eval_examples: validation reviews per
    evaluation (default the profile's n_eval; fewer make each fresh process faster).
    compile: True compiles the whole model; "blocks" compiles each transformer block (faster to
    compile, see `compile_blocks`). base_dtype="bf16" stores LoRA's frozen base in bf16 (see
    `build_lm`).
    """
    if compile not in (False, True, "blocks"):
        raise ValueError(f"compile must be False, True or 'blocks', got {compile!r}")
    p = profiles.get(profile)
    layers = p.lm_layers if layers is None else layers
    seq_len, batch_size = seq_len or p.seq_len, batch_size or p.batch_size
    steps = steps or (p.warmup_steps + p.timed_steps)
    device = hardware.training_device()
    torch.manual_seed(seed)
    lm, tokenizer = build_lm(model or models.default_lm(), layers=layers, lora_r=lora_r, qlora=qlora,
                             base_dtype=base_dtype, device=device, cut=cut,
                             quantization_config=quantization_config)
    train_enc = data.encode_lm(tokenizer, data.load_split("train", p.n_train), seq_len)
    val_enc = data.encode_lm(tokenizer, data.load_split("val", eval_examples or p.n_eval), seq_len)
    val_batches = data.eval_batches(val_enc, batch_size)
    loss_before = evaluation.eval_loss(lm, val_batches) if eval_before else None
    sample = next(data.batches(train_enc, batch_size, seed=seed))
    sample = {k: v.to(device) for k, v in sample.items()}
    if grad_checkpointing:  # on before measuring what the forward pass keeps for backward
        enable_checkpointing(lm)
    # Training mode, as in training: transformers checkpoints only when `model.training` is
    # True, and from_pretrained returns a model in eval mode.
    lm.train()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast == "bf16"):
        saved = meter.saved_tensor_bytes(lambda: lm(**sample).loss)
    eager_flops = _count_then_compile_blocks(lm, sample, autocast) if compile == "blocks" else None
    cfg = TrainConfig(steps=steps, lr=lr, optimizer=optimizer, autocast=autocast,
                      grad_checkpointing=grad_checkpointing, compile=compile is True, seed=seed,
                      progress=False, count_flops=eager_flops is None)
    result = train(lm, data.batches(train_enc, batch_size, seed=seed), cfg)
    step_times = _step_times(result)
    timed = step_times[p.warmup_steps:] or step_times
    loss_after = evaluation.eval_loss(lm, val_batches)
    trainable = models.count_params(lm, trainable_only=True)
    metrics = {
        "step_time_sec": statistics.median(timed),
        "compile_sec": (step_times[0] - statistics.median(timed)) if compile else None,  # True or "blocks"
        "trainable_params": trainable, "total_params": models.count_params(lm),
        "grad_bytes": result.state_bytes["grads"], "activation_bytes": saved,
        "flops": eager_flops or result.flops_per_step, "optimizer_state_bytes": result.state_bytes["optimizer"],
        "checkpoint_bytes": checkpoint_bytes(lm) if measure_checkpoint else None,
        "throughput_samples_per_sec": batch_size / statistics.median(timed),
    }
    quality = {"eval_loss": loss_after, "perplexity": evaluation.perplexity(loss_after)}
    if quality_records:
        quality["accuracy"] = evaluation.lm_sentiment_accuracy(
            lm, tokenizer, data.load_split("val", quality_records))
    train_tokens = steps * batch_size * seq_len
    priced, estimated = meter.price(result.train_seconds)
    metrics.update(priced)
    return {"metrics": {k: v for k, v in metrics.items() if v is not None}, "quality": quality,
            "estimated": estimated,
            "extra": {"eval_loss_before": loss_before, "train_tokens": train_tokens, "steps": steps,
                      "layers": layers, "seq_len": seq_len, "batch_size": batch_size,
                      "train_seconds": result.train_seconds, "step_times_sec": step_times,
                      "device": hardware.detect().name}}


def _count_then_compile_blocks(lm, sample: dict, autocast: str | None) -> int:
    """FLOPs of one step counted on the eager blocks, then the blocks compiled: the first training
    step then holds the compilation (compile_sec), as with compile=True, where train() counts
    FLOPs on the eager module."""
    device = model_device(lm)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast == "bf16"):
        flops = meter.count_flops(lambda: lm(**sample).loss.backward())
    lm.zero_grad(set_to_none=True)
    compile_blocks(lm)
    return flops


def _step_times(result) -> list[float]:
    times, last = [], 0.0
    for point in result.points:
        times.append(point.seconds - last)
        last = point.seconds
    return times

