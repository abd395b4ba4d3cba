"""The capstone's logic (costlab.lessons.stacking) without training anything: the job's sizes and
plans, the waterfall's steps in the one order of plans.CUTS, where QLoRA is predicted to help, the calibration line, and the
team's question answered from given measurements."""
import pytest

from costlab.lessons import calculator, plans, stacking
from costlab import hardware

SHALLOW = plans.llama_shape(hidden=576, layers=2, heads=9, kv_heads=3, intermediate=1536, vocab=49152, tied=True)
DEEP = calculator.PRESETS["SmolLM2-135M"]


def _job(**kw):
    return stacking.Job(model="smollm2", layers=2, seq_len=16, batch_size=4, steps=4, eval_examples=8, **kw)


def test_the_job_gives_lm_training_its_sizes_and_the_estimator_its_plans():
    job = _job(padding_share=0.5)
    sizes = job.sizes()
    assert sizes["layers"] == 2 and sizes["seq_len"] == 16 and sizes["measure_checkpoint"] is False
    assert job.tokens == 4 * 16 * 4 // 2  # real tokens: padding excluded
    bucketed = job.plan(SHALLOW, ["bucketing"])
    assert bucketed.tokens_per_step == job.plan(SHALLOW).tokens_per_step / 2
    assert bucketed.real_tokens_per_step == job.plan(SHALLOW).real_tokens_per_step


def test_the_spread_is_the_range_over_seeds_and_seed_0_is_reused():
    calls = []

    def run_at(seed):
        calls.append(seed)
        return {"quality": {"eval_loss": 5.0 + seed}}
    spread = stacking.seed_spread(run_at, {"quality": {"eval_loss": 4.5}}, seeds=(0, 1, 2))
    assert calls == [1, 2]  # seed 0's run is reused, not repeated
    assert spread["eval_loss_by_seed"] == {0: 4.5, 1: 6.0, 2: 7.0} and spread["range"] == 2.5
    assert spread["runs"] == {1: {"quality": {"eval_loss": 6.0}}, 2: {"quality": {"eval_loss": 7.0}}}  # for the ledger


def test_the_waterfall_adds_one_cut_per_step_in_the_one_order():
    job = _job()
    steps = stacking.waterfall(job, SHALLOW, qlora=False)
    assert [step.name for step in steps] == [stacking.BASELINE] + [n for n in plans.CUT_NAMES if n != "qlora"]
    assert [step.label for step in steps[1:]] == [c.label for c in plans.CUTS if c.name != "qlora"]
    for before, after in zip(steps, steps[1:]):
        assert plans.cuts_of(after.plan) == plans.cuts_of(before.plan) + [after.name]
    assert plans.cuts_of(stacking.waterfall(job, SHALLOW, qlora=True)[-1].plan)[-1] == "qlora"
    # the calculator's toggles are the same list, in the same order
    from costlab.lessons import calculator
    assert list(calculator.panel().toggles) == list(plans.CUT_NAMES)


def test_13s_cuts_move_the_parts_they_are_about():
    base = plans.Plan(DEEP, seq_len=512, batch=4, padding_share=0.4)  # L x L outweighs SDPA's extra output at 512
    mem = lambda cuts: plans.predict_plan_memory(plans.with_cuts(base, cuts))  # noqa: E731
    assert mem(["sdpa"]).activation_bytes < mem([]).activation_bytes  # no L x L probabilities
    assert mem(["chunked_loss"]).head_bytes < mem([]).head_bytes / 2
    assert mem(["bucketing"]).activation_bytes < mem([]).activation_bytes
    flops = lambda cuts: plans.flops_per_token(plans.with_cuts(base, cuts))  # noqa: E731
    assert flops(["chunked_loss"]) == flops([]) + 2 * DEEP.vocab * DEEP.hidden  # the head recomputed


def test_qlora_is_predicted_to_help_only_where_blocks_outweigh_the_embedding():
    job = _job()
    assert not stacking.qlora_helps(job, SHALLOW)[0]
    deep_job = stacking.Job(model="smollm2", layers=None, seq_len=16, batch_size=4, steps=4, eval_examples=8)
    helps, reason = stacking.qlora_helps(deep_job, DEEP)
    assert helps and "%" in reason


def test_calibration_recovers_a_line():
    cal = stacking.calibrate([100.0, 200.0, 400.0], [250.0, 370.0, 610.0])
    assert cal.slope == pytest.approx(1.2) and cal.intercept == pytest.approx(130.0)
    assert cal(300.0) == pytest.approx(490.0)


def test_quality_effects_are_step_to_step_changes():
    assert stacking.quality_effects(["a", "b", "c"], [5.0, 6.5, 6.0]) == {"b": 1.5, "c": -0.5}


def test_the_cpu_8bit_optimizer_workspace_is_charged():
    job = _job()
    cpu_8bit = plans.optimizer_workspace_bytes(job.plan(SHALLOW, ["adamw8bit"]), "cpu")
    cuda_8bit = plans.optimizer_workspace_bytes(job.plan(SHALLOW, ["adamw8bit"]), "cuda")
    cpu_adamw = plans.optimizer_workspace_bytes(job.plan(SHALLOW), "cpu")
    assert cuda_8bit == 0 and cpu_8bit > cpu_adamw > 0


def test_the_team_question_respects_budget_and_quality():
    job = _job()
    cpu = hardware.Device("cpu", "test cpu", 8 * 2**30, False, 2, "cpu-core")
    cal = stacking.Calibration(1.0, 0.0)
    base_mem = plans.predict_plan_memory(job.plan(SHALLOW), device_kind="cpu").total_bytes
    kwargs = dict(allowed=["lora", "grad_checkpointing", "adamw8bit"], baseline_loss=6.0, calibration=cal,
                  device=cpu, flops_per_sec=1e10)
    # LoRA costs 4 nats here: a bound that excludes it leaves only full fine-tuning plans
    pick, table = stacking.cheapest_within(job, SHALLOW, effects={"lora": 4.0}, max_loss=7.0,
                                           budget_bytes=base_mem * 1.01, **kwargs)
    assert pick is not None and pick.plan.lora_r == 0
    assert table["pick"].sum() == 1 and table.loc[table["pick"], "within quality bound"].item()
    pick, _ = stacking.cheapest_within(job, SHALLOW, effects={"lora": 4.0}, max_loss=7.0,
                                       budget_bytes=0.4 * base_mem, **kwargs)
    assert pick is None  # only LoRA plans fit 40%, and the bound excludes them
    pick, _ = stacking.cheapest_within(job, SHALLOW, effects={"lora": 4.0}, max_loss=11.0,
                                       budget_bytes=0.4 * base_mem, **kwargs)
    assert pick is not None and pick.plan.lora_r and cal(pick.memory.total_bytes) <= 0.4 * base_mem
    assert not pick.plan.grad_checkpointing  # it costs FLOPs and is not needed to fit


def test_a_qlora_plan_carries_loras_measured_effect_too():
    job = _job()
    cpu = hardware.Device("cpu", "test cpu", 8 * 2**30, False, 2, "cpu-core")
    cal = stacking.Calibration(1.0, 0.0)
    effects = {"lora": 2.0, "qlora": -0.1}
    _, table = stacking.cheapest_within(job, SHALLOW, allowed=["lora", "qlora"], effects=effects, baseline_loss=1.0,
                                        max_loss=99.0, budget_bytes=1e12, calibration=cal, device=cpu,
                                        flops_per_sec=1e10)
    loss = dict(zip(table["cuts"], table["predicted eval loss"]))
    assert loss["lora"] == 3.0 and abs(loss["qlora"] - 2.9) < 1e-12  # not 0.9: QLoRA is LoRA on a 4-bit base


def test_a_bf16_copy_of_a_checkpoint_is_made_once(tmp_path, monkeypatch):
    import torch
    from safetensors import safe_open
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from costlab import models, workloads

    monkeypatch.setenv("COSTLAB_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "tiny"
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=256)).save_pretrained(source)
    AutoTokenizer.from_pretrained(models.resolve("smollm2")).save_pretrained(source)
    copy = workloads.bf16_checkpoint(str(source))
    assert copy != source and copy.parent == tmp_path / "cache"
    with safe_open(str(copy / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    stamp = (copy / "model.safetensors").stat().st_mtime_ns
    assert workloads.bf16_checkpoint(str(source)) == copy  # cached: not converted again
    assert (copy / "model.safetensors").stat().st_mtime_ns == stamp
    assert workloads.bf16_checkpoint(str(copy)) == copy  # already bf16: passes through
