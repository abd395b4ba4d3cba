"""The measuring helpers of lesson 06 (costlab.lessons.compression) on a tiny random BERT
classifier. The cuts themselves are torch's and bitsandbytes' (called here as the notebook does)."""
import warnings

import pytest
import torch
from torch import nn
from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic
from torch.nn.utils import prune
from transformers import BertConfig, BertForSequenceClassification

from costlab.lessons import compression as cz


def tiny_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config).eval()


def inputs(b=4, s=12):
    ids = torch.randint(0, 200, (b, s), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def masked(model, sparsity, names=None):
    pruned = cz.copy_model(model)
    with torch.no_grad():
        for name in names or cz.block_linears(pruned):
            prune.l1_unstructured(pruned.get_submodule(name), name="weight", amount=sparsity)
    return pruned


def permanent(model):
    for layer in cz.block_linears(model).values():
        if prune.is_pruned(layer):
            prune.remove(layer, "weight")
    return model


def test_layers_are_found_per_block_and_in_all():
    model = tiny_bert()
    per_block = cz.linears_by_block(model)
    assert len(per_block) == 2 and all(len(names) == 6 for names in per_block)  # q, k, v, out, FFN in, FFN out
    assert [n for names in per_block for n in names] == list(cz.block_linears(model))
    assert "classifier" not in cz.block_linears(model) and "bert.pooler.dense" not in cz.block_linears(model)
    one = masked(model, 0.5, per_block[1])  # the scan's step: one block pruned alone
    assert not any(prune.is_pruned(one.get_submodule(n)) for n in per_block[0])
    assert cz.zero_fraction(one) == pytest.approx(0.25, abs=0.01)


def test_masks_add_bytes_and_csr_saves_them_only_when_sparse():
    model, x = tiny_bert(), inputs()
    dense = cz.stored_bytes(model)
    at_90 = masked(model, 0.9)
    assert cz.zero_fraction(at_90) == pytest.approx(0.9, abs=0.01)
    assert cz.stored_bytes(at_90) > dense  # weight_orig + weight_mask
    copied = cz.copy_model(at_90)  # a masked model copies (deepcopy alone refuses the non-leaf weight)
    assert cz.zero_fraction(copied) == pytest.approx(0.9, abs=0.01)
    assert cz.stored_bytes(permanent(cz.copy_model(at_90))) == pytest.approx(dense, rel=0.01)
    with pytest.raises(ValueError, match="prune.remove"):
        cz.to_sparse_storage(at_90)
    sparse = cz.to_sparse_storage(permanent(cz.copy_model(at_90)))
    names = list(cz.block_linears(model))
    assert cz.linear_bytes(sparse, names) < cz.linear_bytes(model, names) / 2
    with torch.no_grad():
        torch.testing.assert_close(sparse(**x).logits, at_90(**x).logits, rtol=1e-4, atol=1e-5)
    half = cz.to_sparse_storage(permanent(masked(model, 0.5)))
    assert cz.linear_bytes(half, names) > cz.linear_bytes(model, names)  # above the 1/3 break-even density


def test_ffn_pairs_and_the_predicted_bytes_of_a_sliced_ffn():
    model = tiny_bert()
    pairs = cz.ffn_pairs(model)
    assert pairs[0] == (["bert.encoder.layer.0.intermediate.dense"], "bert.encoder.layer.0.output.dense")
    assert len(pairs) == 2
    half = cz.copy_model(model)
    for (up,), down in pairs:  # keep the first half of the neurons: the shapes are what is predicted
        u, d = half.get_submodule(up), half.get_submodule(down)
        small_u, small_d = nn.Linear(64, 128), nn.Linear(128, 64)
        with torch.no_grad():
            small_u.weight.copy_(u.weight[:128]), small_u.bias.copy_(u.bias[:128])
            small_d.weight.copy_(d.weight[:, :128]), small_d.bias.copy_(d.bias)
        half.set_submodule(up, small_u)
        half.set_submodule(down, small_d)
    names = list(cz.block_linears(model))
    assert cz.linear_bytes(half, names) < cz.linear_bytes(model, names)
    assert cz.predicted_linear_bytes(model, "fp32", ffn_keep=0.5) == pytest.approx(
        cz.linear_bytes(half, names), rel=0.1)  # serialization adds ~1 KiB a tensor
    assert cz.predicted_linear_bytes(model, "fp32", ffn_keep=0.5) < 0.75 * cz.predicted_linear_bytes(model, "fp32")


def test_int8_bytes_are_seen_and_predicted():
    model = tiny_bert()
    names = list(cz.block_linears(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        q = quantize_dynamic(cz.copy_model(model), {n: default_dynamic_qconfig for n in names}, dtype=torch.qint8)
    assert cz.linear_bytes(model, names) / cz.linear_bytes(q, names) > 3  # packed int8 weights are counted
    assert cz.predicted_linear_bytes(model, "fp32") == pytest.approx(cz.linear_bytes(model, names), rel=0.1)
    assert cz.predicted_linear_bytes(model, "int8") == pytest.approx(cz.linear_bytes(q, names), rel=0.25)
    assert cz.predicted_linear_bytes(model, "nf4") < cz.predicted_linear_bytes(model, "int8")


def test_break_even_density_of_csr():
    assert cz.csr_break_even_density() == pytest.approx(1 / 3)
    assert cz.csr_break_even_density(4, 4) == pytest.approx(1 / 2)
