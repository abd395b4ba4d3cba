import pytest
import torch
from torch import nn

from costlab import meter, models
from costlab.lessons import stepcost


def test_saved_tensor_bytes_excludes_weights_saved_as_views():
    # F.linear saves weight.t(), a view of the Parameter: it must not count as an activation.
    layer = nn.Linear(256, 256, bias=False)
    x = torch.randn(4, 256, requires_grad=True)
    saved = meter.saved_tensor_bytes(lambda: layer(x).sum())
    assert saved == x.numel() * 4  # only the input is kept for the weight's gradient


def _tiny_llama(tied: bool = True, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=tied)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def _setup(model, batch: int = 2, seq: int = 16) -> stepcost.StepSetup:
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0  # some padding, as the review batches have
    labels = ids.masked_fill(mask == 0, -100)
    return stepcost.StepSetup(model, None, torch.optim.AdamW(model.parameters(), lr=1e-3),
                              {"input_ids": ids, "attention_mask": mask, "labels": labels})


@pytest.mark.parametrize("tied", [True, False])
def test_param_split_counts_the_head_as_multiplied_and_the_lookup_as_free(tied):
    model = _tiny_llama(tied)
    split = stepcost.param_split(model)
    vocab_matrix = 256 * 64
    assert split.tied is tied and split.head == vocab_matrix and split.lookup == vocab_matrix
    assert split.matmul == sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert split.total == models.count_params(model)
    # Kaplan's N leaves out both vocabulary matrices, tied or not.
    assert split.non_embedding == split.blocks + sum(p.numel() for n, p in model.named_parameters() if "norm" in n)


def test_counted_flops_are_exactly_6ND_plus_the_attention_term():
    st = _setup(_tiny_llama())
    counted = stepcost.count_step_flops(st)
    split = stepcost.param_split(st.model)
    expected = 6 * split.matmul * st.tokens + stepcost.attention_flops(st.model, seq_len=st.seq_len, tokens=st.tokens)
    assert counted == expected
    assert all(p.grad is None for p in st.model.parameters())  # counting leaves no gradients behind
    choices, terms = stepcost.flops_terms(counted, split, st)
    assert terms.loc["counted by FlopCounterMode", "flops"] == terms.loc["sum of the terms", "flops"]


def test_counting_switches_the_attention_kernel_back():
    st = _setup(_tiny_llama())
    before = st.model.config._attn_implementation
    stepcost.count_step_flops(st, attention="eager")
    assert st.model.config._attn_implementation == before


def test_predicted_states_equal_measured_and_activations_are_in_range():
    st = _setup(_tiny_llama())
    predicted, measured = stepcost.predicted_parts(st), stepcost.measured_parts(st)
    for part in ("weights", "grads", "optimizer"):
        assert predicted[part] == measured[part]
    activations = predicted["activations_blocks"] + predicted["activations_logits"]
    assert 0.5 < measured["activations"] / activations < 2
    table = stepcost.memory_anatomy(predicted, measured)
    assert table.loc["weights", "measured / predicted"] == 1.0


def test_tracemalloc_misses_what_torch_allocates():
    st = _setup(_tiny_llama())
    blind = stepcost.tracemalloc_blind_spot(st)
    assert blind["torch_bytes_created"] == 3 * sum(p.numel() * 4 for p in st.model.parameters()) + 4 * len(
        list(st.model.parameters()))  # grads + m + v, and one 4-byte step per tensor
    assert blind["tracemalloc_peak_bytes"] < 0.2 * blind["torch_bytes_created"]


def test_per_step_price_uses_a_meter_reading_when_there_is_one(monkeypatch):
    monkeypatch.setenv("COSTLAB_POWER_W", "100")
    measured = meter.Measurement(wall_sec=2.0, cpu_sec=2.0, peak_mem_bytes=None, energy_j=400.0,
                                 cost_usd=None, co2_g=None, estimated=())
    values, estimated = stepcost.per_step_price(measured, 0.5)
    assert values["energy_j"] == 100.0 and "energy_j" not in estimated  # 200 W average x 0.5 s
    table_only = meter.Measurement(wall_sec=2.0, cpu_sec=2.0, peak_mem_bytes=None, energy_j=200.0,
                                   cost_usd=None, co2_g=None, estimated=("energy_j",))
    values, estimated = stepcost.per_step_price(table_only, 0.5)
    assert values["energy_j"] == 50.0 and "energy_j" in estimated  # the power table: 100 W x 0.5 s


@pytest.fixture(scope="module")
def tiny_lm_dir(tmp_path_factory):
    """A random tiny Llama saved with a real tokenizer (MiniLM's), as a local checkpoint."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(models.resolve("minilm"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256)
    path = tmp_path_factory.mktemp("tiny_lm")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_meta_device_sweep_counts_without_computing(tiny_lm_dir):
    sweep, split, s_miss = stepcost.context_sweep(tiny_lm_dir, layers=None, seq_lens=[16, 64])
    for seq in (16, 64):
        row = sweep.loc[seq]
        assert row["counted"] == row["6·N·D"] + row["attention term"]
    assert sweep.loc[64, "counted / 6·N·D"] > sweep.loc[16, "counted / 6·N·D"]
    assert s_miss > 0


def test_fresh_process_step_peak_holds_the_states(tiny_lm_dir):
    from costlab.isolate import isolate
    from costlab.lessons.stepcost import fresh_process_step

    result = isolate(fresh_process_step, model=tiny_lm_dir, layers=None, seq_len=32,
                     batch_size=4, steps=1)
    assert result["extra"]["peak_reset_after_load"] in (True, False)
    assert result["peak_mem_bytes"] >= result["extra"]["predicted_states_bytes"]
