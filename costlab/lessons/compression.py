"""Pruning and quantization, measured (notebook 06): the helpers that find the layers, copy,
store and count bytes. The cuts themselves (prune.l1_unstructured, the FFN slicing,
quantize_dynamic, the NF4 load) are written in the notebook.

What each cut changes, and so what it can save:
  unstructured pruning (masks)   zeros in the same dense tensors, plus a mask: saves nothing until
      the weights are stored sparse (CSR, `to_sparse_storage`), smaller only at high sparsity;
  structured pruning             physically smaller Linear layers: fewer bytes and fewer FLOPs;
  dynamic int8                   int8 weights, activations quantized on the fly;
  NF4 (bitsandbytes)             4-bit weights, dequantized block by block.
Bytes are measured as the serialized state dict (`stored_bytes`): what you ship and load, and
the only measure that sees packed int8 weights, which are neither parameters nor buffers.
"""
from __future__ import annotations

import copy
import io
import warnings

import torch
from torch import nn
from torch.nn.utils import prune

from .. import models
from ..estimate import NF4_DQ_BYTES_PER_WEIGHT


def stored_bytes(module: nn.Module) -> int:
    """Bytes of `torch.save(module.state_dict())` (the PyTorch quantization tutorial's measure)."""
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def backbone(model: nn.Module) -> nn.Module:
    """The transformers model itself, or the one a wrapper keeps as `.encoder`
    (`distill.EncoderClassifier`); every function here accepts either."""
    from transformers import PreTrainedModel

    inner = getattr(model, "encoder", None)
    return inner if isinstance(inner, PreTrainedModel) else model


def block_linears(model: nn.Module) -> dict[str, nn.Module]:
    """The transformer blocks' Linear layers by name (embeddings and the classifier head excluded):
    what pruning and quantization act on. Found from the model, not by family names."""
    blocks = models.transformer_blocks(backbone(model))
    ids = {id(m) for b in blocks for m in b.modules()}
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) in ids}


def linears_by_block(model: nn.Module) -> list[list[str]]:
    """The names of each transformer block's Linear layers, block by block (for a per-block scan)."""
    names = {id(m): n for n, m in model.named_modules()}
    return [[names[id(m)] for m in block.modules() if isinstance(m, nn.Linear)]
            for block in models.transformer_blocks(backbone(model))]


def linear_bytes(model: nn.Module, names) -> int:
    """Stored bytes of the named layers (the same names before and after quantization)."""
    return sum(stored_bytes(model.get_submodule(n)) for n in names)


def zero_fraction(model: nn.Module) -> float:
    """Share of the blocks' Linear weights that are exactly zero (masks applied)."""
    weights = [m.weight for m in block_linears(model).values()]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy that also works for a masked model: prune recomputes `weight` from
    weight_orig * weight_mask, a non-leaf tensor that deepcopy refuses; recompute it without
    autograd first (same values, now a leaf)."""
    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, prune.BasePruningMethod):
                    setattr(module, hook._tensor_name, hook.apply_mask(module))
    return copy.deepcopy(model)


class SparseLinear(nn.Module):
    """A Linear whose weight is stored in CSR: values + column indices + row pointers. Saves
    bytes only when few weights remain (each kept value also stores an int64 column index)."""

    def __init__(self, dense: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = dense.in_features, dense.out_features
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the format is what we measure
            warnings.simplefilter("ignore", UserWarning)
            csr = dense.weight.detach().to_sparse_csr()
            # Rebuilt from copies: to_sparse_csr leaves spare capacity in the index storage,
            # which torch.save would write out too.
            csr = torch.sparse_csr_tensor(csr.crow_indices().clone(), csr.col_indices().clone(),
                                          csr.values().clone(), csr.shape)
            self.register_buffer("weight", csr)
        self.register_buffer("bias", None if dense.bias is None else dense.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight, flat.t()).t()  # (out, in) @ (in, n) -> (n, out)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def to_sparse_storage(model: nn.Module) -> nn.Module:
    """A copy with every block Linear stored as CSR. The pruning must be permanent first
    (`prune.remove`): CSR stores the zeros of a plain weight, not a mask."""
    sparse = copy.deepcopy(model)
    for name, layer in block_linears(sparse).items():
        if prune.is_pruned(layer):
            raise ValueError(f"{name} still holds a pruning mask: call prune.remove(layer, 'weight') first")
        sparse.set_submodule(name, SparseLinear(layer))
    return sparse


def ffn_pairs(model: nn.Module) -> list[tuple[list[str], str]]:
    """Per block, (names of the Linear layers into the FFN's hidden neurons, name of the one out):
    BERT's intermediate/output dense, Llama's gate+up/down, DistilBERT's lin1/lin2. The width I
    is found as the input width of the layer that maps back to the model's hidden size."""
    hidden = backbone(model).config.hidden_size
    names = {id(m): n for n, m in model.named_modules()}
    pairs = []
    for block in models.transformer_blocks(backbone(model)):
        linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
        down = [m for m in linears if m.out_features == hidden and m.in_features != hidden]
        if len(down) != 1:
            raise ValueError(f"cannot find one FFN output layer in {type(block).__name__}")
        width = down[0].in_features
        up = [names[id(m)] for m in linears if m.in_features == hidden and m.out_features == width]
        pairs.append((up, names[id(down[0])]))
    return pairs


def csr_break_even_density(value_bytes: int = 4, index_bytes: int = 8) -> float:
    """CSR stores each kept weight as a value and a column index: it is smaller than dense only
    when fewer than value / (value + index) of the weights remain (1/3 for fp32 with int64)."""
    return value_bytes / (value_bytes + index_bytes)


# Predicted stored bytes per weight (the bias stays fp32 in every scheme). NF4 with double
# quantization (estimate.NF4_DQ_BYTES_PER_WEIGHT); int8: one byte per weight plus a per-tensor
# scale (negligible).
BYTES_PER_WEIGHT = {"fp32": 4.0, "int8": 1.0, "nf4": NF4_DQ_BYTES_PER_WEIGHT}


def predicted_linear_bytes(model: nn.Module, scheme: str, *, density: float = 1.0,
                           ffn_keep: float = 1.0) -> float:
    """Predicted bytes of the blocks' Linear layers under a scheme: fp32 | int8 | nf4 | csr
    (fp32 values + an int64 column index per kept weight + an int64 pointer per row), with
    the FFN layers cut to `ffn_keep` of their neurons for structured pruning. Serialization
    adds a little per tensor, which the measured bytes include."""
    pairs = ffn_pairs(model)
    ups, downs = {n for up, _ in pairs for n in up}, {d for _, d in pairs}
    total = 0.0
    for name, layer in block_linears(model).items():
        rows, cols = layer.out_features, layer.in_features
        rows = round(rows * ffn_keep) if name in ups else rows
        cols = round(cols * ffn_keep) if name in downs else cols
        bias = 4 * rows if layer.bias is not None else 0
        if scheme == "csr":
            total += rows * cols * density * (4 + 8) + 8 * (rows + 1) + bias
        else:
            total += rows * cols * BYTES_PER_WEIGHT[scheme] + bias
    return total
