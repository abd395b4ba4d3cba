"""Lesson 13's measuring helpers (costlab.lessons.precision) on a tiny random Llama: fast-bf16
detection from CPU flags, unpadded token blocks, attention bytes (eager keeps L x L, SDPA not),
padding share and FLOPs per real token."""
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from costlab.lessons import precision as pr


def _tiny(attn="eager"):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation=attn)
    return LlamaForCausalLM(config).train()


def _batch(lengths, width):
    ids = torch.randint(1, 128, (len(lengths), width))
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_bf16_fast_only_with_avx512_bf16_or_amx():
    assert pr.bf16_fast_here({"avx2", "avx512_bf16"}, cuda=False) == (True, "avx512_bf16")
    fast, why = pr.bf16_fast_here({"avx2", "avx512f"}, cuda=False)
    assert not fast and "no AVX512-BF16 or AMX" in why


def test_token_blocks_are_unpadded_text():
    class Words:  # a stand-in tokenizer: one id per word
        def __call__(self, text):
            return {"input_ids": [len(w) for w in text.split()]}

    blocks = pr.token_blocks(Words(), 3, 10)
    assert blocks["input_ids"].shape == (3, 10) and bool(blocks["attention_mask"].all())
    assert torch.equal(blocks["labels"], blocks["input_ids"])


def test_eager_attention_keeps_quadratic_bytes_sdpa_does_not():
    model = _tiny("eager")
    kept = {}
    for length in (16, 64):
        batch = _batch([length, length], length)
        model.set_attn_implementation("eager")
        eager = pr.attention_kept_bytes(model, batch)
        model.set_attn_implementation("sdpa")
        kept[length] = (eager, pr.attention_kept_bytes(model, batch))
    eager_growth = kept[64][0] / kept[16][0]
    sdpa_growth = kept[64][1] / kept[16][1]
    assert kept[64][0] > 2 * kept[64][1]  # 4 heads x 64 x 64 probabilities per row and layer
    assert eager_growth > 1.5 * sdpa_growth  # quadratic vs linear in the length
    assert len(pr.attention_modules(model)) == 2


def test_padding_share_and_flops_per_real_token():
    model = _tiny("sdpa")
    padded = [_batch([4, 8], 16)]
    tight = [{k: v[:, :8] for k, v in padded[0].items()}]
    assert pr.padding_share(padded) == 1 - 12 / 32
    assert pr.padding_share(tight) == 1 - 12 / 16
    assert pr.real_tokens(padded) == pr.real_tokens(tight) == 12
    assert pr.flops_per_real_token(model, padded) > 1.8 * pr.flops_per_real_token(model, tight)
    assert all(p.grad is None for p in model.parameters())
    # right padding changes no real token's loss: the summed loss is the same
    assert abs(pr.summed_token_loss(model, padded) - pr.summed_token_loss(model, tight)) < 1e-4
