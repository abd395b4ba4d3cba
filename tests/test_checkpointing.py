"""Gradient checkpointing measures (costlab.lessons.checkpointing) and the activation formula they are
set against (costlab.estimate.activation_bytes), on tiny random models."""
import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from costlab.lessons import checkpointing as ckpt
from costlab import estimate, meter


def tiny_llama(layers=4, hidden=64, heads=4):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def batch(b=2, s=16, vocab=128):
    ids = torch.randint(0, vocab, (b, s), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_checkpointing_keeps_only_each_blocks_input():
    model, x = tiny_llama(), batch()
    ckpt.set_checkpointing(model, False)
    stored = ckpt.kept_for_backward(model, x, blocks_only=True)
    ckpt.set_checkpointing(model, True)
    kept = ckpt.kept_for_backward(model, x, blocks_only=True)
    assert kept == 4 * 2 * 16 * 64 * 4  # layers x s x b x h fp32 values: the inputs, nothing else
    assert stored / kept >= 8
    # the whole model keeps more (embeddings, final norm, head, loss) but still less with checkpointing
    assert ckpt.kept_for_backward(model, x) > kept


def test_recomputation_gives_the_same_loss_and_gradients():
    result = ckpt.same_result(tiny_llama(), batch())
    assert result["loss_allclose"] and result["grads_allclose"] and result["n_grads"] > 0
    assert not ckpt.is_checkpointing(tiny_llama())


def test_the_published_formula_and_its_fixes():
    shape = estimate.ModelShape(total_params=1, hidden=64, layers=2, heads=4, vocab=1)
    s, b, h, a = 32, 2, 64, 4
    sixteen = estimate.activation_bytes(shape, seq_len=s, batch=b, precision="bf16")
    assert sixteen == pytest.approx(2 * s * b * h * (34 + 5 * a * s / h))  # Korthikanti et al., 16-bit
    fp32 = estimate.activation_bytes(shape, seq_len=s, batch=b, precision="fp32")
    assert fp32 == pytest.approx(2 * s * b * h * (66 + 9 * a * s / h))  # masks stay 1 byte
    inputs_only = estimate.activation_bytes(shape, seq_len=s, batch=b, checkpointing=True, recompute_peak=False)
    assert inputs_only == 2 * s * b * h * 4
    flash = estimate.activation_bytes(shape, seq_len=s, batch=b, dropout=False, attention_scores=False)
    longer = estimate.activation_bytes(shape, seq_len=2 * s, batch=b, dropout=False, attention_scores=False)
    assert longer == pytest.approx(2 * flash)  # no a*s^2 term: linear in s


def test_largest_batch_from_a_measured_line():
    fixed, slope = ckpt.peak_line([{"batch_size": 8, "peak_mem_bytes": 1000}, {"batch_size": 16, "peak_mem_bytes": 1800}])
    assert (fixed, slope) == (200, 100)
    assert ckpt.largest_batch(1000, fixed, slope) == 8
    assert ckpt.largest_batch(1000, fixed, 50) == 16
    with pytest.raises(ValueError):
        ckpt.largest_batch(1000, fixed, 0)


def test_what_the_model_keeps_is_read_from_its_config():
    assert not ckpt.uses_dropout(tiny_llama())
    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    assert ckpt.uses_dropout(bert)
    eager = LlamaForCausalLM._from_config(tiny_llama().config, attn_implementation="eager")
    assert ckpt.stores_attention_scores(eager) and not ckpt.stores_attention_scores(tiny_llama())


def test_interleaved_timing_pools_every_round():
    calls = {"a": 0, "b": 0}

    def bump(name):
        def run():
            calls[name] += 1
        return run

    timings = meter.time_interleaved({"a": bump("a"), "b": bump("b")}, warmup=2, repeats=3, rounds=4)
    assert calls == {"a": 14, "b": 14}
    assert len(timings["a"].samples_sec) == 12 and len(timings["a"].warmup_sec) == 2


def test_blocks_run_under_torch_checkpoint_keep_only_their_inputs():
    import functools

    from torch.utils.checkpoint import checkpoint

    from costlab import models

    def wrap(model):
        for block in models.transformer_blocks(model):
            block.forward = functools.partial(checkpoint, block.forward, use_reentrant=False)
        return model

    def unwrap(model):
        for block in models.transformer_blocks(model):
            vars(block).pop("forward", None)
        return model

    model, x = tiny_llama(), batch()
    stored = ckpt.kept_for_backward(model, x, blocks_only=True)
    wrap(model)
    assert ckpt.kept_for_backward(model, x, blocks_only=True, inputs_kept=True) == 4 * 2 * 16 * 64 * 4
    unwrap(model)
    assert ckpt.kept_for_backward(model, x, blocks_only=True) == stored
    result = ckpt.same_result(model, x, on=wrap, off=unwrap)
    assert result["loss_allclose"] and result["grads_allclose"] and result["n_grads"] > 0
