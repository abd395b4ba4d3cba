"""The plan estimator (costlab.lessons.plans) and the what-if calculator's logic, without a browser."""
import math
import re

import pytest
import torch

from costlab.lessons import calculator, plans
from costlab import estimate, hardware, meter

TINY = dict(hidden=64, layers=2, heads=4, kv_heads=2, intermediate=128, vocab=1000)


@pytest.fixture(scope="module")
def tiny_llama():
    """A random-init Llama of the same family as smollm2, small enough to build in a test."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=TINY["hidden"], num_hidden_layers=TINY["layers"],
                         num_attention_heads=TINY["heads"], num_key_value_heads=TINY["kv_heads"],
                         intermediate_size=TINY["intermediate"], vocab_size=TINY["vocab"],
                         tie_word_embeddings=True)
    return LlamaForCausalLM(config)


def _plan(shape, **cuts):
    return plans.Plan(shape, seq_len=16, batch=2, train_tokens=1e6, **cuts)


def test_llama_shape_counts_parameters_exactly(tiny_llama):
    shape = plans.llama_shape(**TINY, tied=True)
    assert shape.total_params == sum(p.numel() for p in tiny_llama.parameters())
    assert shape == estimate.ModelShape.from_model(tiny_llama)
    # A published figure: SmolLM2-135M has 134,515,008 parameters (its config, counted).
    assert calculator.PRESETS["SmolLM2-135M"].total_params == 134_515_008


def test_lora_params_match_peft(tiny_llama):
    from costlab.workloads import apply_lora

    import copy

    model = apply_lora(copy.deepcopy(tiny_llama), r=4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert plans.lora_params(plans.llama_shape(**TINY, tied=True), 4) == trainable


@pytest.mark.parametrize("cuts", [{}, {"lora_r": 4}, {"lora_r": 4, "grad_checkpointing": True}])
def test_flops_per_token_match_torch_counter(tiny_llama, cuts):
    """2N forward + 4N (full) or 2N (frozen base) backward (+2N blocks recomputed), against
    FlopCounterMode; attention scores are left out of the model, hence the tolerance."""
    import copy

    from costlab.train import enable_checkpointing
    from costlab.workloads import apply_lora

    model = copy.deepcopy(tiny_llama)
    if cuts.get("lora_r"):
        model = apply_lora(model, r=cuts["lora_r"])
    if cuts.get("grad_checkpointing"):
        enable_checkpointing(model)
    model.train()
    ids = torch.randint(0, TINY["vocab"], (2, 16))
    counted = meter.count_flops(lambda: model(input_ids=ids, labels=ids).loss.backward())
    predicted = plans.flops_per_token(_plan(plans.llama_shape(**TINY, tied=True), **cuts)) * 32
    assert predicted == pytest.approx(counted, rel=0.1)


def test_each_cut_moves_the_memory_part_it_is_about():
    shape = calculator.PRESETS["SmolLM2-135M"]
    mem = lambda **cuts: plans.predict_plan_memory(_plan(shape, **cuts))  # noqa: E731
    full, lora = mem(), mem(lora_r=8)
    assert full.weights_bytes == full.grad_bytes == 4 * shape.total_params
    assert full.optimizer_state_bytes == 8 * shape.total_params
    assert lora.grad_bytes < full.grad_bytes / 100 and lora.optimizer_state_bytes < full.optimizer_state_bytes / 100
    assert mem(lora_r=8, qlora=True).weights_bytes < lora.weights_bytes
    assert mem(grad_checkpointing=True).activation_bytes < full.activation_bytes
    assert mem(autocast="bf16").activation_bytes == pytest.approx(full.activation_bytes / 2, rel=0.05)
    # 8-bit states for everything but the norms, which bitsandbytes keeps in 32-bit (under 4096 values)
    norms = (2 * shape.layers + 1) * shape.hidden
    eight_bit = mem(optimizer="adamw8bit").optimizer_state_bytes
    assert 2 * (shape.total_params - norms) + 8 * norms < eight_bit < 1.02 * (2 * (shape.total_params - norms) + 8 * norms)
    assert mem(compile=True).total_bytes == full.total_bytes  # not modelled, and says so


def test_time_money_and_carbon_follow_the_tables():
    shape = calculator.PRESETS["SmolLM2-360M"]
    h100 = hardware.table_device("H100")
    plan = plans.Plan(shape, seq_len=512, batch=8, train_tokens=1e9, autocast="bf16")
    pred = plans.predict_plan(plan, h100, utilization=0.5)
    rate = hardware.PEAK_FLOPS["H100"] * 0.5
    assert pred.step_sec == pytest.approx(pred.flops_per_step / rate)
    assert pred.total_sec == pytest.approx(pred.step_sec * 1e9 / (512 * 8))
    assert pred.cost_usd == pytest.approx(hardware.PRICE_USD_PER_HOUR["H100"] * pred.total_sec / 3600)
    assert pred.co2_g == pytest.approx(hardware.POWER_W["H100"] * pred.total_sec / 3.6e6 * hardware.grid_g_per_kwh())
    fp32 = plans.predict_plan(plans.with_cuts(plan, []), h100, utilization=0.5)
    assert fp32.step_sec > 10 * pred.step_sec  # fp32 has no tensor-core peak
    assert any("utilization assumed" in a for a in pred.assumptions)


def test_a_device_without_bf16_gets_fp32_speed_and_says_so():
    plan = plans.Plan(calculator.PRESETS["SmolLM2-135M"], seq_len=256, batch=4, train_tokens=1e6, autocast="bf16")
    pred = plans.predict_plan(plan, hardware.table_device("T4"))
    assert pred.flops_per_sec == pytest.approx(hardware.PEAK_FLOPS_FP32["T4"] * plans.DEFAULT_UTILIZATION)
    assert any("no bf16" in a for a in pred.assumptions)


def test_unknown_peak_gives_no_time_rather_than_a_guess():
    cpu = hardware.Device("cpu", "some cpu", 8 * 2**30, False, 2, "cpu-core")
    pred = plans.predict_plan(_plan(calculator.PRESETS["SmolLM2-135M"]), cpu)
    assert pred.step_sec is None and pred.cost_usd is None and pred.co2_g is None
    measured = plans.predict_plan(_plan(calculator.PRESETS["SmolLM2-135M"]), cpu, flops_per_sec=1e11)
    assert measured.step_sec == pytest.approx(measured.flops_per_step / 1e11)


def test_fits_compares_memory_plus_reserve_with_the_device():
    shape = calculator.PRESETS["Llama-3.1-8B"]
    plan = plans.Plan(shape, seq_len=2048, batch=1, train_tokens=1e6)
    assert plans.predict_plan(plan, hardware.table_device("H100")).fits is False  # 16 B/param > 80 GiB
    small = plans.with_cuts(plan, ["qlora", "grad_checkpointing", "bf16"])
    assert plans.predict_plan(small, hardware.table_device("L4")).fits is True


def test_cheapest_picks_the_least_cost_within_the_budget():
    shape = calculator.PRESETS["SmolLM2-135M"]
    base = plans.Plan(shape, seq_len=256, batch=8, train_tokens=1e7)
    h100 = hardware.table_device("H100")
    preds = [plans.predict_plan(p, h100) for p in plans.candidates(base, ["grad_checkpointing", "adamw8bit", "bf16"])]
    assert len(preds) == 8
    budget = sorted(p.memory.total_bytes for p in preds)[3]
    pick = plans.cheapest(preds, budget)
    assert pick.memory.total_bytes <= budget
    assert all(pick.step_sec <= p.step_sec for p in preds if p.memory.total_bytes <= budget)
    assert plans.cheapest(preds, min(p.memory.total_bytes for p in preds) - 1) is None


def test_candidates_are_distinct_and_qlora_implies_lora():
    base = _plan(calculator.PRESETS["SmolLM2-135M"])
    cands = plans.candidates(base, ["lora", "qlora"], lora_r=8)
    assert len(cands) == len(set(cands)) == 3
    assert all(p.lora_r == 8 for p in cands if p.qlora)
    with pytest.raises(ValueError, match="lora_r"):
        plans.Plan(base.shape, 16, 2, qlora=True)
    with pytest.raises(ValueError, match="unknown cuts"):
        plans.with_cuts(base, ["fp8"])


def _shown_bytes(calc) -> float:
    text = re.search(r'costlab-calc-memory">([^<]+)<', calc.output.value).group(1)
    number, unit = text.split()
    return float(number) * {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}[unit]


def test_the_panel_updates_when_a_toggle_changes():
    calc = calculator.panel(model="SmolLM2-360M", seq_len=1024, batch=8, device="A10G")
    before = _shown_bytes(calc)
    calc.toggles["grad_checkpointing"].value = True
    assert _shown_bytes(calc) < before
    assert _shown_bytes(calc) == pytest.approx(calc.prediction().memory.total_bytes, rel=0.01)
    calc.toggles["qlora"].value = True
    assert calc.plan().lora_r > 0 and calc.plan().qlora
    assert "assumptions" in calc.output.value and "does NOT fit" not in calc.output.value


def test_the_panel_says_when_a_plan_does_not_fit():
    calc = calculator.panel(model="Llama-3.1-70B", seq_len=4096, batch=8, device="L4")
    assert "does NOT fit" in calc.output.value
    assert calc.prediction().fits is False


def test_this_machine_uses_a_measured_throughput():
    calc = calculator.panel(device=calculator.THIS_MACHINE, measured_flops_per_sec=2e10)
    pred = calc.prediction()
    assert pred.flops_per_sec == 2e10
    assert math.isclose(pred.step_sec, pred.flops_per_step / 2e10)
