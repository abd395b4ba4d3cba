"""report.html content: one row per lesson, numbers from the ledger only, merge grouping and
counting of bad lines. The browser test (test_report_browser.py) checks that it renders."""
import re
import subprocess
import sys

import pytest

from costlab import course, ledger, metrics
from costlab.course import scoreboard, report
from tests.ledgers import full_ledger, lesson_records

OTHER_GPU = {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "count": 1, "memory_bytes": 85520809984}


def _row(html: str, lesson: str) -> str:
    match = re.search(rf'<tr class="cut[^"]*" data-lesson="{lesson}".*?</tr>', html, re.S)
    assert match, f"no row for {lesson}"
    return match.group(0)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    path = tmp_path_factory.mktemp("full") / "ledger.jsonl"
    records = full_ledger(path)
    return records, report.build(ledger.read_report(path))


def test_one_row_and_one_plot_per_lesson(full_report):
    _, html = full_report
    for lesson in course.LESSONS:
        assert 'data-status="measured"' in _row(html, lesson.name)
        assert re.search(rf'<figure class="cut-plot" data-lesson="{lesson.name}"><img ', html)
    assert html.count('<tr class="cut') == len(course.LESSONS)
    assert '<figure class="pareto"><img' in html


def test_headline_is_the_best_variant_against_its_baseline_from_the_ledger(full_report):
    records, html = full_report
    lesson = course.lesson("02")
    mine = {r["variant"]: r for r in records if r["notebook"] == lesson.name}
    m = lesson.headline_metric
    expected = metrics.improvement_ratio(m, mine["baseline"]["metrics"][m], mine["cut"]["metrics"][m])
    cut = scoreboard.groups(records)[0].cuts[2]
    assert cut.headline.variant == "cut" and cut.headline.ratio == pytest.approx(expected)
    (q,) = cut.headline.quality  # the quality of the same pair, not of another variant
    assert (q.before, q.after) == (mine["baseline"]["quality"]["accuracy"], mine["cut"]["quality"]["accuracy"])
    row = _row(html, lesson.name)
    assert scoreboard.format_ratio(expected) in row and f"{q.before:.4g} → {q.after:.4g}" in row
    assert "Hu et al. 2021" in row  # the published figure and its source sit beside ours


def test_direction_comes_from_the_vocabulary():
    # Throughput is higher-is-better: 10 -> 40 samples/s is 4x better, not 0.25x.
    cut = scoreboard.cut_result(course.lesson("10"), lesson_records(course.lesson("10"), scale=1.0))
    assert cut.headline.ratio == pytest.approx(4.0)


def test_lessons_without_records_say_not_run(results_dir):
    path = results_dir / "ledger.jsonl"
    for rec in lesson_records(course.lesson("04")):
        ledger.append(rec, path)
    html = report.build(ledger.read_report(path))
    assert 'data-status="measured"' in _row(html, "04_gradient_checkpointing")
    others = [l for l in course.LESSONS if l.number != "04"]
    for lesson in others:
        row = _row(html, lesson.name)
        assert 'data-status="not run"' in row and "not run" in row
    empty = report.build(ledger.read_report(results_dir / "nothing.jsonl"))
    assert empty.count('data-status="not run"') == len(course.LESSONS)


def test_a_cut_that_costs_more_is_not_called_a_saving():
    lesson = course.lesson("05")
    recs = lesson_records(lesson, scale=1.0)
    for rec in recs[1:]:  # both variants slower than eager
        rec["metrics"]["step_time_sec"] = 2000.0
    cut = scoreboard.cut_result(lesson, recs)
    assert cut.headline.ratio == pytest.approx(0.5)
    assert "no saving here" in report._saving_cell(cut) and "costs-more" in report._saving_cell(cut)


def test_latest_run_gives_the_headline_and_older_runs_the_range():
    lesson = course.lesson("02")
    old = lesson_records(lesson, scale=1.0, run_id="old")
    new = lesson_records(lesson, scale=2.0, run_id="new")
    for rec in new:
        rec["provenance"]["created_at"] = "2999-01-01T00:00:00+00:00"
    cut = scoreboard.cut_result(lesson, old + new)
    assert cut.headline.ratio == pytest.approx(8.0) and cut.run_count == 2
    assert cut.ratio_range == pytest.approx((4.0, 8.0))


def test_a_newer_run_without_a_pair_does_not_hide_a_complete_one():
    lesson = course.lesson("02")
    done = lesson_records(lesson, scale=1.0, run_id="done")
    stopped = lesson_records(lesson, scale=1.0, run_id="stopped")[:1]  # killed after its baseline
    stopped[0]["provenance"]["created_at"] = "2999-01-01T00:00:00+00:00"
    cut = scoreboard.cut_result(lesson, done + stopped)
    assert cut.headline.ratio == pytest.approx(4.0) and "newest run recorded no" in cut.note


def test_missing_headline_metric_falls_back_and_says_so():
    lesson = course.lesson("08")
    recs = lesson_records(lesson, scale=1.0)
    for rec in recs:
        del rec["metrics"]["latency_ms"]
    cut = scoreboard.cut_result(lesson, recs)
    assert cut.metric == "wall_sec" and "latency_ms not recorded" in cut.note


def test_merge_groups_by_hardware_and_counts_bad_lines(tmp_path):
    a, b = tmp_path / "laptop.jsonl", tmp_path / "gpu.jsonl"
    for rec in lesson_records(course.lesson("02")) + lesson_records(course.lesson("06")):
        ledger.append(rec, a)
    for rec in lesson_records(course.lesson("02"), scale=3.0, device=OTHER_GPU, profile="gpu"):
        ledger.append(rec, b)
    with open(b, "a") as f:
        f.write('{"hello": "world"}\n{"schema_version": 1, "notebook": "02_lo\n')  # foreign, torn
    with open(a, "a") as f:
        f.write("\x00\x01 not json at all\n")
    out = subprocess.run([sys.executable, "-m", "costlab", "merge", str(a), str(b), str(tmp_path / "absent.jsonl"),
                          "--out", str(tmp_path / "workshop")], capture_output=True, text=True, check=True).stdout
    assert "merged 9 records" in out and "2 malformed" in out and "1 foreign" in out
    assert "not found, skipped" in out
    html = (tmp_path / "workshop" / "report.html").read_text()
    sections = re.findall(r'<section class="hardware"[^>]*data-hardware="([^"]+)" data-profile="([^"]+)"', html)
    assert len(sections) == 2 and any("H100" in s[0] and s[1] == "gpu" for s in sections)
    assert '<section id="across">' in html and "2 malformed, 1 foreign" in html
    assert len(ledger.read(tmp_path / "workshop" / "ledger.jsonl")) == 9
    gpu = next(g for g in scoreboard.groups(ledger.read(tmp_path / "workshop" / "ledger.jsonl"))
               if g.device["kind"] == "cuda")
    assert gpu.cuts[2].headline.ratio == pytest.approx(12.0) and gpu.cuts[6].status == "not run"


def test_unknown_names_and_notebooks_are_counted_not_fatal(results_dir):
    path = results_dir / "ledger.jsonl"
    recs = lesson_records(course.lesson("02"))
    recs[2]["metrics"]["joules_from_the_future"] = 3.0  # a newer kit's metric
    stray = dict(recs[0], notebook="99_not_a_lesson")
    for rec in [*recs, stray]:
        ledger.append(rec, path)
    html = report.build(ledger.read_report(path))
    assert 'data-status="measured"' in _row(html, "02_lora")
    assert "1 record(s) of notebooks outside this manifest" in html


def test_report_is_self_contained_and_has_provenance_and_run_times(full_report):
    _, html = full_report
    assert not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html and "<link" not in html
    assert '<section id="provenance">' in html and "Commits:" in html and "torch" in html
    state = {"02_lora": {"status": "ok", "seconds": 12.5, "error": ""},
             "05_compiler_fusion": {"status": "failed", "seconds": 3.0, "error": "Trace\nRuntimeError: boom"}}
    timed = report._course_run(state)
    assert "12.5" in timed and "RuntimeError: boom" in timed and "Total: 16 s" in timed


def test_a_published_figure_on_another_measure_gets_our_ratio_on_that_measure():
    lesson = course.lesson("02")  # headline: optimizer state bytes; LoRA's paper: trainable params
    recs = lesson_records(lesson, scale=1.0)
    recs[0]["metrics"]["trainable_params"] = 1_000_000
    recs[2]["metrics"]["trainable_params"] = 1_000
    figure, source = report._published(scoreboard.cut_result(lesson, recs))
    assert "10,000x" in figure and "ours on this measure (cut vs baseline): 1,000x" in figure
    assert source.startswith("Hu et al. 2021")


def test_a_saving_bought_with_quality_is_flagged_and_notebooks_can_steer_the_headline():
    lesson = course.lesson("12")
    recs = lesson_records(lesson, scale=1.0)  # `cut` (4x) loses accuracy 0.80 -> 0.776: 3% worse
    cut = scoreboard.cut_result(lesson, recs)
    assert cut.headline.variant == "cut" and "not a clean saving" in report._saving_cell(cut)
    recs[2]["extra"]["headline"] = False  # e.g. a failure drill: its shorter run is no saving
    cut = scoreboard.cut_result(lesson, recs)
    assert cut.headline.variant == "half" and "not a clean saving" not in report._saving_cell(cut)
    recs[2]["extra"]["headline"] = True  # marked: only marked variants compete
    assert scoreboard.cut_result(lesson, recs).headline.variant == "cut"


def test_a_baseline_that_never_reached_the_target_gives_a_lower_bound(results_dir):
    """01's from-scratch arm can miss the target within its budget: its FLOPs to target are then
    unknown but above what it spent, so the report shows the saving as "at least"."""
    lesson = course.lesson("01")
    assert lesson.headline_metric == "flops_to_target"
    run = {"run_id": "run-x"}
    recs = [ledger.make_record(lesson.name, "scratch", metrics_={"flops": 5e12}, quality={"accuracy": 0.5},
                               profile="smoke", extra=run),
            ledger.make_record(lesson.name, "pretrained", metrics_={"flops": 1e12, "flops_to_target": 1e12},
                               quality={"accuracy": 0.7}, baseline="scratch", profile="smoke", extra=run)]
    cut = scoreboard.cut_result(lesson, recs)
    assert cut.metric == "flops_to_target" and not cut.note
    assert cut.headline.lower_bound and cut.headline.ratio == pytest.approx(5.0)
    assert cut.headline.ratio_text == "≥ 5.00x"
    path = results_dir / "ledger.jsonl"
    for rec in recs:
        ledger.append(rec, path)
    html = report.build(ledger.read_report(path))
    assert "≥ 5.00x" in _row(html, lesson.name) and "did not reach the target" in _row(html, lesson.name)
    # A baseline that reached the target is an ordinary pair.
    recs[0]["metrics"]["flops_to_target"] = 4e12
    assert not scoreboard.cut_result(lesson, recs).headline.lower_bound
