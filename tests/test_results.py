import json
import math
import subprocess
import sys

import pytest

from costlab import compare, ledger, metrics
from costlab.expect import Checks, ClaimFailed


def _record(variant, **metrics):
    quality = {k: metrics.pop(k) for k in list(metrics) if k in ("accuracy", "eval_loss")}
    return ledger.make_record("02_lora", variant, metrics_=metrics, quality=quality, profile="smoke")


def test_ledger_survives_a_torn_last_line(results_dir):
    path = results_dir / "ledger.jsonl"
    ledger.append(_record("full", step_time_sec=1.0), path)
    ledger.append(_record("lora", step_time_sec=0.5), path)
    with open(path, "a") as f:
        f.write('{"schema_version": 1, "notebook": "02_lo')  # killed mid-write
    report = ledger.read_report(path)
    assert [r["variant"] for r in report.records] == ["full", "lora"]
    assert report.skipped_malformed == 1
    ledger.append(_record("qlora", step_time_sec=0.4), path)  # the next run still appends cleanly
    assert [r["variant"] for r in ledger.read(path)] == ["full", "lora", "qlora"]


def test_records_carry_provenance_and_no_machine_paths(results_dir):
    rec = _record("full", step_time_sec=1.0)
    assert rec["provenance"]["versions"]["torch"]
    assert "git_commit" in rec["provenance"] and rec["profile"] == "smoke"
    assert str(results_dir) not in json.dumps(rec) and "/root" not in json.dumps(rec)


def test_unknown_metric_names_are_refused():
    with pytest.raises(KeyError, match="vocabulary"):
        _record("full", step_seconds=1.0)


def test_compare_refuses_a_saving_that_cost_quality():
    before = {"metrics": {"step_time_sec": 1.0}, "quality": {"accuracy": 0.90}}
    cheap_but_worse = {"metrics": {"step_time_sec": 0.2}, "quality": {"accuracy": 0.80}}
    cheap_and_fine = {"metrics": {"step_time_sec": 0.2}, "quality": {"accuracy": 0.89}}
    bad = compare.compare(before, cheap_but_worse, quality_bounds={"accuracy": 0.02})
    assert not bad.is_saving("step_time_sec")
    assert "not a saving" in bad.frame().loc["step_time_sec", "verdict"]
    good = compare.compare(before, cheap_and_fine, quality_bounds={"accuracy": 0.02})
    assert good.is_saving("step_time_sec") and good.ratio("step_time_sec") == pytest.approx(5.0)


def test_direction_comes_from_the_vocabulary():
    before = {"metrics": {"throughput_samples_per_sec": 10.0, "peak_mem_bytes": 100}}
    after = {"metrics": {"throughput_samples_per_sec": 20.0, "peak_mem_bytes": 200}}
    c = compare.compare(before, after)
    assert c.ratio("throughput_samples_per_sec") == 2.0 and c.ratio("peak_mem_bytes") == 0.5


def test_checks_fail_loudly_and_report_not_expected_savings():
    checks = Checks("05_compiler_fusion")
    checks.saving("step_time_sec", 1.0, 0.9, at_least=1.5, expected_here=False, reason="2-core CPU")
    checks.verify()  # an unexpected saving is reported, not failed
    checks.saving("step_time_sec", 1.0, 0.9, at_least=1.5)
    with pytest.raises(ClaimFailed, match="step time"):
        checks.verify()
    assert [c.status for c in checks.claims] == ["not expected here", "FAILED"]


def test_quality_check_uses_the_metric_direction():
    checks = Checks("02_lora")
    assert checks.quality("eval_loss", 2.0, 2.05, bound=0.1)
    assert not checks.quality("eval_loss", 2.0, 2.5, bound=0.1)
    assert not checks.quality("accuracy", 0.9, 0.8, bound=0.05)


def test_merge_cli_skips_malformed_and_foreign_lines(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    ledger.append(_record("full", step_time_sec=1.0), a)
    ledger.append(_record("lora", step_time_sec=0.5), b)
    with open(b, "a") as f:
        f.write('{"hello": "world"}\nnot json\n')
    out = subprocess.run([sys.executable, "-m", "costlab", "merge", str(a), str(b), "--out",
                          str(tmp_path / "merged")], capture_output=True, text=True, check=True).stdout
    assert "merged 2 records" in out and "1 malformed" in out and "1 foreign" in out
    assert len(ledger.read(tmp_path / "merged" / "ledger.jsonl")) == 2


def test_anchors_table_puts_our_ratio_beside_the_published_one():
    from costlab import anchors

    frame = anchors.beside("02", {"trainable_params": 1152.0})
    row = frame[frame["published (not measured here)"].str.contains("trainable")].iloc[0]
    assert row["ours x (measured here)"] == "1.15e+03x" and row["published x"] == "1e+04x"


def test_the_ledger_records_a_never_reached_or_undefined_value_as_not_measured():
    assert ledger.finite_or_none(math.inf) is None and ledger.finite_or_none(math.nan) is None
    assert ledger.finite_or_none(2.5) == 2.5


def test_a_target_never_reached_reads_never_not_an_infinite_number_of_flops():
    assert metrics.format_value("flops_to_target", math.inf) == "never"
    assert metrics.format_value("flops_to_target", 2.5e9) == "2.50G FLOP"
