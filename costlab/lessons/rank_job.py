"""What every rank of the parallel-training notebooks (10, 11) does the same way: build the
classifier, take its share of each global batch, time steps, fingerprint its parameters.

The job is the kit's review classifier (the encoder, truncated to the profile's layers) with
dropout switched off: with dropout, two runs that see the same data still draw different masks,
and "the same update" could not be checked exactly.
"""
from __future__ import annotations

import hashlib
import time
from typing import Iterator

import torch
from torch import nn

from .. import data, meter, models, profiles, rank


def no_dropout(model: nn.Module) -> nn.Module:
    """Dropout off (p = 0) so that equal inputs give equal gradients on every rank and run."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def build_classifier(*, model: str | None, layers: int | None, seed: int,
                     device: torch.device) -> tuple[nn.Module, object]:
    """The same initial weights on every rank: pretrained blocks, head seeded by `seed`."""
    torch.manual_seed(seed)
    net, tokenizer = models.load(model or models.default_encoder(), task="classification",
                                 layers=layers, seed=seed)
    return no_dropout(net).to(device), tokenizer


def train_encoded(tokenizer, *, n_train: int, seq_len: int) -> dict[str, torch.Tensor]:
    return data.encode_classification(tokenizer, data.load_split("train", n_train), seq_len)


def global_batches(encoded: dict, global_batch: int, seed: int) -> Iterator[dict]:
    """The job's batches of `global_batch` examples, the same sequence on every rank."""
    return data.batches(encoded, global_batch, seed=seed)


def shard(batch: dict, index: int, parts: int) -> dict:
    """Slice `index` of a global batch split into `parts` equal micro-batches (a rank takes its own)."""
    size = len(next(iter(batch.values()))) // parts
    return {k: v[index * size:(index + 1) * size] for k, v in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def loss_of(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**batch).loss


def fingerprint(model: nn.Module) -> str:
    """A hash of every parameter's bytes: equal fingerprints mean bitwise-identical weights."""
    digest = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2 holds DTensor shards
        digest.update(name.encode())
        digest.update(local.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def written_script(notebook, target: str) -> str:
    """The text a notebook's `%%writefile <target>` cell writes (the worker script a lesson shows),
    so that its solutions and tests run the very lines the learner reads. `target` is the cell's
    argument as written, e.g. "{WORKER}"."""
    import nbformat

    for cell in nbformat.read(notebook, as_version=4).cells:
        first, _, body = cell.source.partition("\n")
        if cell.cell_type == "code" and first.split()[:2] == ["%%writefile", target]:
            return body
    raise LookupError(f"{notebook} has no '%%writefile {target}' cell")


def compare_params(a: nn.Module, b: nn.Module, *, rtol: float = 1e-4, atol: float = 1e-6) -> dict:
    """How far two models' parameters are apart: max |difference| and allclose."""
    worst, close = 0.0, True
    for (name, pa), (_, pb) in zip(sorted(a.named_parameters()), sorted(b.named_parameters())):
        diff = (pa.detach() - pb.detach()).abs().max().item()
        worst = max(worst, diff)
        close = close and torch.allclose(pa.detach(), pb.detach(), rtol=rtol, atol=atol)
    return {"max_abs_diff": worst, "allclose": bool(close), "rtol": rtol, "atol": atol}


def job_sizes(p: profiles.Profile) -> dict:
    """A profile's sizes as the workers' keyword arguments (so an overridden profile reaches
    the ranks: they run in other processes and read nothing from the notebook)."""
    return {"layers": p.encoder_layers, "seq_len": p.cls_seq_len, "batch_size": p.batch_size,
            "n_train": p.n_train, "warmup": p.warmup_steps, "rounds": p.timed_steps}


def sizes(profile: str | None, **given) -> dict:
    """The job's sizes: what the caller passed, else the profile's."""
    defaults = job_sizes(profiles.get(profile))
    return {k: (given.get(k) if given.get(k) is not None else v) for k, v in defaults.items()}


def rank_header(ctx: rank.Context) -> dict:
    return {"rank": ctx.rank, "world_size": ctx.world_size, "backend": ctx.backend,
            "device": str(ctx.device.type), "threads": torch.get_num_threads(),
            "time": time.time()}


def held_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and optimizer states this rank holds, from its own tensors
    (under FSDP each is a DTensor, and `to_local()` is this rank's shard)."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    def nbytes(tensors) -> int:
        return sum(local(t).numel() * local(t).element_size() for t in tensors if t is not None)

    params = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {"params": nbytes(params), "grads": nbytes(p.grad for p in params),
            "optimizer": nbytes(states)}
