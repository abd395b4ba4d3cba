"""Pruning and quantization (costlab.lessons.compression) on a tiny random BERT classifier."""
import pytest
import torch
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


def test_masks_add_bytes_and_csr_saves_them_only_when_sparse():
    model, x = tiny_bert(), inputs()
    dense = cz.stored_bytes(model)
    masked = cz.prune_unstructured(model, 0.9)
    assert cz.zero_fraction(masked) == pytest.approx(0.9, abs=0.01)
    assert cz.stored_bytes(masked) > dense  # weight_orig + weight_mask
    assert cz.stored_bytes(cz.remove_masks(cz.prune_unstructured(model, 0.9))) == pytest.approx(dense, rel=0.01)
    sparse = cz.to_sparse_storage(masked)
    names = list(cz.block_linears(model))
    assert cz.linear_bytes(sparse, names) < cz.linear_bytes(model, names) / 2
    with torch.no_grad():
        torch.testing.assert_close(sparse(**x).logits, masked(**x).logits, rtol=1e-4, atol=1e-5)
    half = cz.to_sparse_storage(cz.prune_unstructured(model, 0.5))
    assert cz.linear_bytes(half, names) > cz.linear_bytes(model, names)  # above the 1/3 break-even density


def test_structured_pruning_removes_neurons_and_keep_all_changes_nothing():
    model, x = tiny_bert(), inputs()
    pairs = cz.ffn_pairs(model)
    assert len(pairs) == 2 and all(len(up) == 1 for up, _ in pairs)
    half = cz.prune_ffn(model, 0.5)
    assert half.get_submodule(pairs[0][1]).in_features == 128
    assert half.get_submodule(pairs[0][0][0]).out_features == 128
    assert cz.stored_bytes(half) < cz.stored_bytes(model)
    same = cz.prune_ffn(model, 1.0)
    with torch.no_grad():
        torch.testing.assert_close(same(**x).logits, model(**x).logits, rtol=1e-5, atol=1e-6)
    assert cz.predicted_linear_bytes(model, "fp32", ffn_keep=0.5) == pytest.approx(
        cz.linear_bytes(half, list(cz.block_linears(half))), rel=0.1)  # serialization adds ~1 KiB a tensor


def test_int8_shrinks_linear_layers_about_fourfold_and_predictions_hold():
    model = tiny_bert()
    names = list(cz.block_linears(model))
    q = cz.quantize_int8(model)
    assert cz.linear_bytes(model, names) / cz.linear_bytes(q, names) > 3
    assert cz.predicted_linear_bytes(model, "fp32") == pytest.approx(cz.linear_bytes(model, names), rel=0.1)
    with_table = cz.quantize_int8(model, embeddings=True)
    assert cz.stored_bytes(with_table) < cz.stored_bytes(q)
    with torch.no_grad():
        assert with_table(**inputs()).logits.shape == (4, 2)
    # The classifier head stays fp32 (quantized, it cost 9 accuracy points in the cpu profile);
    # the same holds for the kit's wrapper, whose head sits beside `.encoder`.
    assert type(q.classifier) is torch.nn.Linear
    assert all(type(q.get_submodule(n)) is not torch.nn.Linear for n in names)
    from costlab.lessons.distill import EncoderClassifier

    wrapped = cz.quantize_int8(EncoderClassifier(tiny_bert().bert))
    assert not any(type(m) is torch.nn.Linear for m in wrapped.encoder.modules())
    assert any(type(m) is torch.nn.Linear for m in wrapped.head.modules())


def test_break_even_density_of_csr():
    assert cz.csr_break_even_density() == pytest.approx(1 / 3)
    assert cz.csr_break_even_density(4, 4) == pytest.approx(1 / 2)
