"""costlab.lora: what 02 shows beside its runs, on tiny random models (no download)."""
import copy

import pytest
import torch

from costlab import lora
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
