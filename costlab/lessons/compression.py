"""Pruning and quantization, measured (notebook 06): smaller models that cost less to serve.

What each variant changes, and so what it can save:
  unstructured pruning (torch.nn.utils.prune)  zeros in the same dense tensors, plus a mask:
      saves nothing until the weights are stored sparse (CSR), and a sparse matmul is faster
      only at high sparsity;
  structured pruning (`prune_ffn`)             physically smaller Linear layers: fewer bytes
      and fewer FLOPs;
  dynamic int8 (`quantize_int8`)               int8 weights, activations quantized on the fly;
  NF4 (`load_nf4`, bitsandbytes)               4-bit weights, dequantized block by block.
Bytes are measured as the serialized state dict (`stored_bytes`): what you ship and load, and
the only measure that sees packed int8 weights, which are neither parameters nor buffers.
"""
from __future__ import annotations

import copy
import io
import tempfile
import warnings

import torch
from torch import nn
from torch.nn.utils import prune

from .. import meter, models
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


def prune_unstructured(model: nn.Module, sparsity: float) -> nn.Module:
    """A copy whose block Linear weights have their smallest |w| zeroed, per layer, by masks
    (`prune.l1_unstructured`): each layer now holds weight_orig + weight_mask."""
    pruned = copy_model(model)
    if sparsity > 0:
        with torch.no_grad():  # the masked weight is then a leaf, so the model can be copied
            for layer in block_linears(pruned).values():
                prune.l1_unstructured(layer, name="weight", amount=sparsity)
    return pruned


def remove_masks(model: nn.Module) -> nn.Module:
    """Make pruning permanent (`prune.remove`): a plain dense weight that contains zeros."""
    for layer in block_linears(model).values():
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")
    return model


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


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def to_sparse_storage(model: nn.Module) -> nn.Module:
    """A copy with every (pruned) block Linear stored as CSR."""
    sparse = remove_masks(copy_model(model))
    for name, layer in block_linears(sparse).items():
        _replace(sparse, name, SparseLinear(layer))
    return sparse


def ffn_pairs(model: nn.Module) -> list[tuple[list[str], str]]:
    """Per block, (names of the Linear layers into the FFN's hidden neurons, name of the one out):
    BERT's intermediate/output dense, Llama's gate+up/down, DistilBERT's lin1/lin2. The width I
    is found as the input width of the layer that maps back to the model's hidden size."""
    hidden = backbone(model).config.hidden_size
    pairs = []
    for block in models.transformer_blocks(backbone(model)):
        names = {id(m): n for n, m in model.named_modules()}
        linears = [m for m in block.modules() if isinstance(m, nn.Linear)]
        down = [m for m in linears if m.out_features == hidden and m.in_features != hidden]
        if len(down) != 1:
            raise ValueError(f"cannot find one FFN output layer in {type(block).__name__}")
        width = down[0].in_features
        up = [names[id(m)] for m in linears if m.in_features == hidden and m.out_features == width]
        pairs.append((up, names[id(down[0])]))
    return pairs


def _sliced(layer: nn.Linear, keep: torch.Tensor, dim: int) -> nn.Linear:
    """A new, smaller Linear with only the `keep` rows (dim=0, outputs) or columns (dim=1)."""
    weight = layer.weight.detach().index_select(dim, keep)
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None)
    new.weight.data.copy_(weight)
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.detach() if dim == 1 else layer.bias.detach()[keep])
    return new


def prune_ffn(model: nn.Module, keep: float) -> nn.Module:
    """A copy with only the `keep` fraction of each block's FFN neurons, physically removed.

    A neuron's importance: the norm of its input weights (summed over gate and up projections)
    times the norm of its output weights: a neuron whose in- or out-weights are small changes
    the block's output little (magnitude pruning at the granularity of whole neurons).
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    pruned = copy_model(model)
    for up_names, down_name in ffn_pairs(pruned):
        down = pruned.get_submodule(down_name)
        score = down.weight.detach().norm(dim=0)
        score = score * sum(pruned.get_submodule(n).weight.detach().norm(dim=1) for n in up_names)
        kept = score.topk(max(1, round(keep * down.in_features))).indices.sort().values
        for n in up_names:
            _replace(pruned, n, _sliced(pruned.get_submodule(n), kept, dim=0))
        _replace(pruned, down_name, _sliced(down, kept, dim=1))
    if hasattr(backbone(pruned).config, "intermediate_size"):
        backbone(pruned).config.intermediate_size = len(kept)
    return pruned


def quantize_int8(model: nn.Module, *, embeddings: bool = False) -> nn.Module:
    """Dynamic int8 quantization (weights int8 per tensor, activations quantized per batch at run
    time; fbgemm/x86 kernels on CPU) of every Linear in the transformer blocks, and optionally of the word
    embedding table (8-bit rows with their own scale and offset).

    torch 2.13 still ships `torch.ao.quantization.quantize_dynamic` and its fused CPU kernels,
    marked deprecated in favour of torchao, whose int8 path on CPU is a Python tensor subclass
    without fused int8 kernels; so the kit uses torch.ao and silences its deprecation warnings
    here, in one place.
    """
    from torch.ao.quantization import default_dynamic_qconfig, float_qparams_weight_only_qconfig

    # The blocks' Linear layers only (`block_linears`, what pruning acts on too): the classifier
    # head stays fp32, as NF4 leaves it. Its few weights save nothing worth having, and one
    # per-tensor scale over a 2-row head rounds away the small margins between the classes.
    spec: dict = {name: default_dynamic_qconfig for name in block_linears(model)}
    if embeddings:
        table = backbone(model).get_input_embeddings()
        name = next(n for n, m in model.named_modules() if m is table)
        spec[name] = float_qparams_weight_only_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy_model(model).eval(), spec, dtype=torch.qint8)


def head_names(model: nn.Module) -> list[str]:
    """The modules outside the backbone (a classifier head): kept in full precision by NF4."""
    return [n for n, _ in model.named_children() if n != model.base_model_prefix]


def load_nf4(model: nn.Module, tokenizer) -> nn.Module:
    """The same weights reloaded with 4-bit NF4 blocks (bitsandbytes, double quantization), as a
    learner does it: save, then `from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`.
    A head stays fp32 (tiny, and NF4's CPU kernel wants at least 64 output features); a wrapper
    keeps its own head and gets the quantized encoder put in."""
    from ..workloads import nf4_config

    inner = backbone(model)
    wrapped = inner is not model
    config = nf4_config()
    if not wrapped:
        config.llm_int8_skip_modules = head_names(model)
    with tempfile.TemporaryDirectory() as tmp, models._quiet_transformers():  # no progress bars
        inner.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        quantized, _ = models.load(tmp, task="encoder" if wrapped else "classification",
                                   quantization_config=config, num_labels=getattr(inner.config, "num_labels", 2))
    if not wrapped:
        return quantized.eval()
    if getattr(inner, "pooler", "absent") is None and hasattr(quantized, "pooler"):
        quantized.pooler = None  # the wrapper's head pools by itself (see distill.EncoderClassifier)
    out = copy_model(model)
    out.encoder = quantized
    return out.eval()


def latencies(variants: dict[str, nn.Module], batch: dict, *, warmup: int = 1, repeats: int = 3,
              rounds: int = 3) -> dict[str, meter.Timing]:
    """Inference time of one batch per variant, variants timed in turns (`meter.inference_latencies`)."""
    return meter.inference_latencies({name: (m, batch) for name, m in variants.items()},
                                     warmup=warmup, repeats=repeats, rounds=rounds)


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
