"""costlab.lessons.lora: what 02 shows beside its runs, on tiny random models (no download)."""
import copy

import pytest
import torch

from costlab.lessons import lora
from costlab.workloads import apply_lora


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=200, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def _batch(seq_len=8):
    ids = torch.randint(0, 200, (2, seq_len), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def _train_two_steps(model):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):
        model(**_batch()).loss.backward()
        opt.step()
        opt.zero_grad()
    return model


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama", "gpt2-conv1d"])
def test_params_per_block_match_what_peft_adds(build):
    """Counted from the shapes (GPT-2's Conv1D stores (in, out), Linear (out, in)): a transposed
    reading would still match on square projections, so GPT-2's c_attn (32 -> 96) is in the set."""
    model = build()
    peft_model = apply_lora(copy.deepcopy(model), r=4)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert lora.lora_params_per_block(model, 4) * 2 == trainable


def test_merge_check_catches_a_trained_adapter_and_an_untrained_one():
    trained = lora.merge_check(_train_two_steps(apply_lora(_llama(), r=4)), _batch())
    assert trained["allclose"] and not trained["merged_has_lora_modules"]
    assert trained["adapter_moves_logits_by"] > 100 * trained["merged_vs_adapter_max_abs_diff"]
    fresh = lora.merge_check(apply_lora(_llama(), r=4), _batch())  # B = 0: nothing moved
    assert fresh["adapter_moves_logits_by"] == 0.0


def test_the_reentrant_checkpointing_trap_is_measured():
    rows = {r["setup"].split(" (")[0]: r["grad_norm"]
            for r in lora.checkpointing_pitfall(apply_lora(_llama(), r=4), _batch())}
    assert rows["no checkpointing"] > 0
    assert rows["reentrant, no input-grad hook"] == 0.0  # the adapters learn nothing
    assert rows["reentrant + model.enable_input_require_grads()"] == pytest.approx(rows["no checkpointing"], rel=1e-4)
    assert rows["non-reentrant"] == pytest.approx(rows["no checkpointing"], rel=1e-4)


def test_activation_bytes_grow_with_the_sequence():
    rows = lora.saved_bytes_by_seq_len(apply_lora(_llama(), r=4), _batch(8), [8, 16, 32])
    assert [r["tokens"] for r in rows] == [16, 32, 64]
    acts = [r["activation_bytes"] for r in rows]
    assert acts[0] < acts[1] < acts[2] and acts[2] > 3 * acts[0]


def test_nf4_prediction_leaves_the_embedding_in_its_dtype():
    """NF4 stores only the Linear layers' weights in 4 bits: a tied embedding stays fp32. The old
    prediction counted every frozen weight at 4 bits (total x 0.5 bytes)."""
    from costlab import estimate

    model = _llama()
    shape = estimate.ModelShape.from_model(model)
    total, linear = shape.total_params, estimate.quantizable_params(model)
    blocks = sum(p.numel() for p in model.model.layers.parameters())
    norms = sum(p.numel() for n, p in model.model.layers.named_parameters() if "norm" in n)
    assert linear == blocks - norms  # the head is the tied embedding: not counted
    predicted = estimate.predict_memory(shape, seq_len=1, batch=1, trainable_params=0,
                                        weight_precision="nf4").weights_bytes
    assert predicted == linear * 0.5 + (total - linear) * 4
    assert predicted > 2 * total * 0.5  # the embedding is most of this tiny model
    # bf16 is a storage dtype, not a quantized load: every frozen weight in 2 bytes
    assert estimate.predict_memory(shape, seq_len=1, batch=1, trainable_params=0,
                                   weight_precision="bf16").weights_bytes == total * 2


def test_quantizable_params_count_gpt2_conv1d_and_skip_the_head():
    from costlab import estimate

    model = _gpt2()
    per_block = sum(m.weight.numel() for n, m in model.transformer.h[0].named_modules()
                    if n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert estimate.quantizable_params(model) == 2 * per_block
    sized = estimate.ModelShape(total_params=1000, hidden=4, layers=1, heads=1, vocab=50)
    assert sized.quantized_params() == 1000 - 50 * 4  # from sizes alone: all but the embedding


def test_measured_nf4_weight_bytes_match_the_prediction(tmp_path):
    """Loaded with bitsandbytes' NF4 (double quantization), the weights occupy the prediction plus
    the block scales: one 8-bit scale per 64 weights (1/32 of the 4-bit bytes) and a little more."""
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from costlab import estimate

    model = _llama()
    model.save_pretrained(tmp_path)
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    try:
        quantized = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=nf4)
    except (RuntimeError, ImportError) as err:
        pytest.skip(f"no 4-bit bitsandbytes on this device: {err}")
    linear = estimate.quantizable_params(model)
    predicted = estimate.predict_memory(estimate.ModelShape.from_model(model), seq_len=1, batch=1,
                                        trainable_params=0, weight_precision="nf4").weights_bytes
    scales = lora.stored_weight_bytes(quantized) - predicted
    assert linear * 0.5 / 64 <= scales <= linear * 0.5 / 16
