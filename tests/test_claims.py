"""Claims as data: margins, claim lines in the ledger, the report's claims, merge's failures and
the soak table, on synthetic ledgers (no notebook runs)."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import costlab
from costlab import claims, expect, ledger
from costlab.expect import Checks, ClaimFailed

GPU = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 1, "memory_bytes": 85520809984}


@pytest.mark.parametrize("value, threshold, direction, expected", [
    (1.27, 1.5, "at_least", -0.1533),  # under a floor: negative
    (2.0, 1.5, "at_least", 0.3333),  # over a floor: positive
    (0.5, 1.0, "at_most", 0.5),  # under a limit: positive
    (1.5, 1.0, "at_most", -0.5),  # over a limit: negative
    (-0.2, -0.1, "at_most", 1.0),  # a negative limit: the sign still says inside
    (0.3, 0.0, "at_least", 1.0),  # a zero floor: measured against the value itself
])
def test_margin_sign_is_positive_inside_and_negative_outside(value, threshold, direction, expected):
    assert expect.margin(value, threshold, direction) == pytest.approx(expected, abs=1e-4)


def test_each_check_kind_records_value_threshold_and_margin():
    checks = Checks("06_pruning_quantization")
    checks.saving("model_size_bytes", 100.0, 50.0, at_least=1.5)  # 2.0x vs 1.5x
    checks.saving("step_time_sec", 1.27, 1.0, at_least=1.5)  # 1.27x vs 1.5x: fails
    checks.quality("accuracy", 0.852, 0.828, bound=0.02)  # 2.4 points worse, 2 allowed: fails
    checks.quality("accuracy", 0.852, 0.842, bound=0.04)  # 1 point of 4 used: +75%
    checks.quality("eval_loss", 4.0, 3.0, bound=0.0)  # no-worse bound: 1 nat better, of 4
    checks.at_most("overhead", 0.2, 0.25, expected_here=False, reason="2 cores")
    checks.true("allclose", True)
    got = [(c.status, c.value, c.threshold, c.direction, c.margin, c.asserted) for c in checks.claims]
    assert got[0][:4] == ("held", 2.0, 1.5, "at_least") and got[0][4] == pytest.approx(1 / 3)
    assert got[1][0] == "FAILED" and got[1][4] == pytest.approx(-0.1533, abs=1e-4)
    assert got[2][:4] == ("FAILED", pytest.approx(0.024), 0.02, "at_most") and got[2][4] == pytest.approx(-0.2)
    assert got[3][4] == pytest.approx(0.75) and got[4][4] == pytest.approx(0.25)
    assert got[5][0] == "held" and got[5][5] is False and got[5][4] == pytest.approx(0.2)
    assert got[6][4] is None and got[6][1] is None


def test_an_infinite_ratio_is_written_without_breaking_the_json(results_dir):
    s = costlab.start("06_pruning_quantization")
    s.checks.saving("model_size_bytes", 100.0, 0.0, at_least=2)  # variant stores nothing: inf x
    s.checks.verify()
    (line,) = ledger.read_claims()
    assert line["claim"]["status"] == "held" and line["claim"]["value"] is None


def test_verify_writes_every_claim_before_it_raises(results_dir):
    s = costlab.start("05_compiler_fusion")
    s.checks.saving("step_time_sec", 1.27, 1.0, at_least=1.5)
    s.checks.true("outputs match", True)
    with pytest.raises(ClaimFailed):
        s.checks.verify()
    lines = ledger.read_claims()
    assert [c["claim"]["status"] for c in lines] == ["FAILED", "held"]
    assert lines[0]["claim"]["margin"] == pytest.approx(-0.1533, abs=1e-4)
    assert {c["run_id"] for c in lines} == {s.run_id} and lines[0]["profile"] == s.profile.name
    with pytest.raises(ClaimFailed):
        s.checks.verify()  # a second verify writes nothing twice
    assert len(ledger.read_claims()) == 2
    assert ledger.read() == []  # claim lines are not variant records


def test_records_without_claims_and_claims_beside_records_both_load(results_dir):
    path = results_dir / "ledger.jsonl"
    rec = ledger.make_record("02_lora", "full", metrics_={"step_time_sec": 1.0}, profile="smoke")
    ledger.append(rec, path)
    assert ledger.read(path) == [rec] and ledger.read_claims(path) == []
    ledger.append(ledger.make_claim_record("02_lora", expect.Claim("c", "1", "held").as_dict(), profile="smoke"), path)
    report = ledger.read_report(path)
    assert report.records == [rec] and len(report.claims) == 1 and report.skipped_foreign == 0


def _claim_lines(path, *, device=None, run="r1", margin_05=0.3, status_05="held", profile="smoke"):
    for notebook, text, margin, status in (("05_compiler_fusion", "block step time at least 1.5x better", margin_05, status_05),
                                           ("02_lora", "optimizer bytes at least 4x better", 1.5, "held"),
                                           ("06_pruning_quantization", "model bytes at least 3x better", 0.3, "held"),
                                           ("06_pruning_quantization", "model bytes at least 3x better", 1.5, "held")):
        claim = expect.Claim(text, f"margin {margin}", status, margin=margin, value=1.5 * (1 + margin), threshold=1.5)
        line = ledger.make_claim_record(notebook, claim.as_dict(), profile=profile, run_id=f"{run}-{notebook}")
        if device:
            line["device"] = device
        ledger.append(line, path)


def test_merge_lists_a_claim_that_failed_on_one_machine(tmp_path):
    a, b = tmp_path / "laptop.jsonl", tmp_path / "gpu.jsonl"
    _claim_lines(a)
    _claim_lines(b, device=GPU, profile="gpu", margin_05=-0.15, status_05="FAILED")
    out = subprocess.run([sys.executable, "-m", "costlab", "merge", str(a), str(b), "--out", str(tmp_path / "w")],
                         capture_output=True, text=True, check=True).stdout
    assert "1 claim(s) failed on some machine" in out
    assert re.search(r"05_compiler_fusion: block step time.*\n\s+FAILED on cuda: NVIDIA H100.* · gpu", out)
    assert "held on cpu" in out
    assert len(ledger.read_claims(tmp_path / "w" / "ledger.jsonl")) == 8
    html = (tmp_path / "w" / "report.html").read_text()
    failed = re.findall(r'<tr class="claim-failed" data-lesson="([^"]+)">(.*?)</tr>', html)
    assert [f[0] for f in failed] == ["05_compiler_fusion"] and "H100" in failed[0][1]
    assert '<span class="failed">-15%</span>' in html and "+30%" in html


def test_a_newer_passing_run_replaces_an_older_failure_on_the_same_machine(tmp_path):
    path = tmp_path / "ledger.jsonl"
    _claim_lines(path, run="old", margin_05=-0.1, status_05="FAILED")
    _claim_lines(path, run="new")
    assert claims.failures(ledger.read_claims(path)) == []


def test_soak_table_takes_each_claims_smallest_margin_and_marks_fragile(tmp_path, capsys):
    dirs = []
    for i, margin in enumerate((0.3, 0.05, 0.4)):
        d = tmp_path / f"smoke-{i}"
        d.mkdir()
        _claim_lines(d / "ledger.jsonl", run=f"run{i}", margin_05=margin)
        dirs.append(d)
    rows = {r.text: r for r in claims.soak_rows(claims.read_dirs(dirs))}
    step = rows["block step time at least 1.5x better"]
    assert step.smallest_margin == pytest.approx(0.05) and step.runs == 3 and step.failed == 0 and step.fragile
    assert not rows["optimizer bytes at least 4x better"].fragile
    # two claims with one text in one run (06: int8 and NF4) stay two rows
    assert rows["model bytes at least 3x better"].smallest_margin == pytest.approx(0.3)
    assert rows["model bytes at least 3x better #2"].smallest_margin == pytest.approx(1.5)
    code = subprocess.run([sys.executable, "-m", "costlab", "soak-table", *map(str, dirs)],
                          capture_output=True, text=True)
    assert code.returncode == 0
    line = next(l for l in code.stdout.splitlines() if l.startswith("block step time"))
    assert "+5%" in line and line.split()[-1] == "FRAGILE" and " 3 " in line
    assert "1 fragile" in code.stdout


def test_soak_table_fails_when_a_run_failed_a_claim(tmp_path):
    _claim_lines(tmp_path / "ledger.jsonl", margin_05=-0.2, status_05="FAILED")
    run = subprocess.run([sys.executable, "-m", "costlab", "soak-table", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 1 and "-20%" in run.stdout


def test_claim_lines_are_plain_json(results_dir):
    s = costlab.start("02_lora")
    s.checks.at_least("share recovered", 0.5, 0.33)
    s.checks.verify()
    raw = (results_dir / "ledger.jsonl").read_text().splitlines()
    assert json.loads(raw[-1])["kind"] == "claim"


def test_a_narrow_claim_whose_notebook_says_why_is_explained_not_fragile(tmp_path, capsys):
    checks = expect.Checks("14_stacking_the_cuts")
    checks.saving("activation_bytes", 1.3, 1.0, at_least=1.2, narrow_because="a byte count, the same on every run")
    checks.saving("optimizer_state_bytes", 1.3, 1.0, at_least=1.2)  # as narrow, no reason given
    assert "narrow by nature: a byte count" in capsys.readouterr().out
    for run in ("a", "b"):
        for claim in checks.claims:
            ledger.append(ledger.make_claim_record("14_stacking_the_cuts", claim.as_dict(), profile="cpu",
                                                   run_id=run), tmp_path / "ledger.jsonl")
    rows = {r.text.split(" at least")[0]: r for r in claims.soak_rows(claims.read_dirs([tmp_path]))}
    explained, unexplained = rows["bytes saved for backward"], rows["optimizer state bytes"]
    assert explained.explained and not explained.fragile and explained.narrow_because.startswith("a byte count")
    assert unexplained.fragile and not unexplained.explained
    table = claims.soak_table(list(rows.values()))
    assert "narrow, explained: a byte count" in table and "1 fragile" in table and "1 narrow by nature" in table
    # a reason does not excuse a failure: the same claim failing on one run is fragile again
    failed = expect.Claim("bytes saved for backward at least 1.2x better", "1.1x", "FAILED", value=1.1, threshold=1.2,
                          margin=-0.08, narrow_because="a byte count, the same on every run")
    ledger.append(ledger.make_claim_record("14_stacking_the_cuts", failed.as_dict(), profile="cpu", run_id="c"),
                  tmp_path / "ledger.jsonl")
    again = {r.text: r for r in claims.soak_rows(claims.read_dirs([tmp_path]))}
    assert again["bytes saved for backward at least 1.2x better"].fragile


def test_a_claim_reported_on_one_profile_is_judged_on_the_runs_that_asserted_it(tmp_path):
    lines = [("smoke", False, -1.6, "not expected here"), ("cpu", True, 0.25, "held")]
    for i, (profile, asserted, margin, status) in enumerate(lines):
        claim = expect.Claim("LoRA's eval loss / full fine-tuning's", "x", status, value=1.0, threshold=1.25,
                             direction="at_most", margin=margin, asserted=asserted)
        ledger.append(ledger.make_claim_record("02_lora", claim.as_dict(), profile=profile, run_id=f"r{i}"),
                      tmp_path / "ledger.jsonl")
    (row,) = claims.soak_rows(claims.read_dirs([tmp_path]))
    assert row.smallest_margin == pytest.approx(0.25) and row.asserted and not row.fragile and row.runs == 2
