"""costlab.lessons.scaling: efficiency, cost per sample, the right-sizing rule and the ZeRO formulas."""
import math

import pytest

from costlab.lessons import scaling


def test_efficiency_and_cost_per_sample():
    assert scaling.efficiency(18.0, 10.0, 2) == pytest.approx(0.9)
    # 2 devices at 3.6 USD/h for a 1 s step of 10 samples: 2 * 0.001 USD / 10
    assert scaling.cost_per_sample(1.0, 10, 2, 3.6) == pytest.approx(2e-4)
    assert scaling.cost_per_sample(1.0, 10, 2, None) is None


def test_right_size_grows_while_the_premium_stays_within_the_limit():
    rule = scaling.right_size({1: 10.0, 2: 18.0, 4: 28.0}, 1.0, max_premium=1.25)
    assert rule.cheapest == 1
    assert [round(r["scaling_efficiency"], 2) for r in rule.rows] == [1.0, 0.9, 0.7]
    assert [r["pays"] for r in rule.rows] == [True, True, False]  # premiums 1, 1.11, 1.43
    assert rule.recommended == 2
    assert scaling.right_size({1: 10.0, 2: 18.0, 4: 28.0}, 1.0, max_premium=1.5).recommended == 4
    with pytest.raises(ValueError):
        scaling.right_size({2: 18.0}, 1.0)


def test_right_size_to_target_prices_the_samples_a_larger_batch_needs():
    # Perfect scaling (1 s per step at any N, 10 samples per worker): every sample costs the same,
    # so the per-sample rule grows without limit; 4 workers need twice the samples, so not here.
    steps = {1: 1.0, 2: 1.0, 4: 1.0}
    rule = scaling.right_size_to_target({1: 100.0, 2: 110.0, 4: 200.0}, steps, 10, 3.6)
    assert [r["steps_to_target"] for r in rule.rows] == [10.0, 5.5, 5.0]
    assert [r["cost_usd"] for r in rule.rows] == pytest.approx([0.01, 0.011, 0.02])  # N x 3.6/3600 x steps
    assert rule.cheapest == 1 and rule.recommended == 2
    assert scaling.right_size({n: n * 10 / 1.0 for n in steps}, 3.6).recommended == 4
    never = scaling.right_size_to_target({1: 100.0, 2: math.inf}, {1: 1.0, 2: 1.0}, 10, 1.0)
    assert never.recommended == 1 and never.rows[1]["pays"] is False
    with pytest.raises(ValueError, match="no world size"):
        scaling.right_size_to_target({1: math.inf}, {1: 1.0}, 10, 1.0)
    with pytest.raises(ValueError, match="same world sizes"):
        scaling.right_size_to_target({1: 10.0, 2: 10.0}, {1: 1.0}, 10, 1.0)


def test_project_step_time_scales_the_communication_as_a_ring():
    # 2 workers: 1.0 s, of it 0.4 s communication (ring factor 1); 4 workers: 2*3/4 = 1.5x of it.
    assert scaling.project_step_time(1.0, 0.4, 2, 4) == pytest.approx(0.6 + 0.6)
    assert scaling.project_step_time(1.0, 0.4, 2, 2) == pytest.approx(1.0)


def test_zero_formulas():
    psi, n = 1000, 4
    ddp = scaling.zero_bytes_per_rank(psi, n, 0)
    assert ddp == {"params": 4000, "grads": 4000, "optimizer": 8000}
    assert scaling.zero_bytes_per_rank(psi, n, 1)["optimizer"] == 2000
    assert scaling.zero_bytes_per_rank(psi, n, 2)["grads"] == 1000
    fsdp = scaling.zero_bytes_per_rank(psi, n, 3)
    assert sum(fsdp.values()) == sum(ddp.values()) / n
    mixed = scaling.zero_bytes_per_rank(psi, 1, 0, param_bytes=2, grad_bytes=2, optimizer_bytes=12)
    assert sum(mixed.values()) == 16 * psi  # the ZeRO paper's 16 bytes per parameter


def test_bytes_moved():
    ddp = scaling.bytes_moved_per_rank("ddp", 100.0, 4)
    assert ddp == pytest.approx(150.0)  # 2 (N-1)/N
    assert scaling.bytes_moved_per_rank("fsdp", 100.0, 4) / ddp == pytest.approx(1.5)
    assert scaling.bytes_moved_per_rank("fsdp", 100.0, 4, gathered_once=1.0) == pytest.approx(ddp)


def _rank(step, synced, alone, micro=100):
    return {"step_time_sec": {"step": step, "backward_synced": synced, "backward_no_sync": alone},
            "activation_bytes": {"micro_batch": micro}}


def test_ddp_variants_from_rank_results():
    one = {"batch_size": 8, "equivalence": {"k": 2},
           "step_time_sec": {"step": 1.0, "accumulation": 1.8, "one_batch": 1.6},
           "activation_bytes": {"micro_batch": 100, "one_batch": 200}}
    rows = scaling.ddp_variants(one, {2: [_rank(1.2, 0.9, 0.6), _rank(1.25, 0.9, 0.6)]}, 3.6)
    assert set(rows) == {"1_worker", "grad_accum_x2", "one_batch_x2", "ddp_2_workers"}
    ddp = rows["ddp_2_workers"]
    assert ddp["step_time_sec"] == 1.25  # the slowest rank
    assert ddp["scaling_efficiency"] == pytest.approx((16 / 1.25) / (2 * 8 / 1.0))
    assert ddp["comm_fraction"] == pytest.approx(0.3 / 1.25)
    assert rows["grad_accum_x2"]["throughput_samples_per_sec"] == pytest.approx(16 / 1.8)
    assert rows["one_batch_x2"]["activation_bytes"] == 200


def test_shard_variants_take_the_largest_rank():
    def rank(params, step, sent):
        return {"batch_size": 4, "step_time_sec": step,
                "held_bytes": {"params": params, "grads": params, "optimizer": 2 * params},
                "collectives": {"total": {"calls": 3, "full_bytes": 2 * sent, "sent_bytes": sent}}}
    rows = scaling.shard_variants({"ddp": [rank(20, 1.0, 40), rank(24, 0.9, 40)],
                                   "fsdp": [rank(10, 1.5, 44), rank(12, 1.4, 46)]}, None)
    assert rows["fsdp"]["model_size_bytes"] == 12 and rows["ddp"]["optimizer_state_bytes"] == 48
    assert rows["fsdp"]["throughput_samples_per_sec"] == pytest.approx(8 / 1.5)  # the slowest rank
    assert rows["fsdp"]["comm_bytes_per_step"] == 46
    assert rows["ddp"]["cost_usd_per_sample"] is None
