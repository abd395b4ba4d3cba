"""`make course` on two tiny stand-in notebooks: one passes and records, one fails. The course keeps
going, says which failed and why, resumes without rerunning the passed one, and writes the
executed notebooks, the state with run times and report.html under COSTLAB_RESULTS."""
import json
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from costlab import course
from costlab.course import runner

GOOD = ("from costlab import ledger\n"
        "ledger.record('00_measuring_cost', 'base', metrics={'flops': 10.0})\n"
        "ledger.record('00_measuring_cost', 'half', metrics={'flops': 5.0}, baseline='base')")
BAD = "raise RuntimeError('the saving did not show up')"


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# stand-in"), nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def two_notebooks(tmp_path, monkeypatch):
    folder = tmp_path / "lessons"  # not results/notebooks, where the executed copies go
    folder.mkdir()
    _notebook(folder / "00_measuring_cost.ipynb", GOOD)
    _notebook(folder / "01_fine_tune_dont_pretrain.ipynb", BAD)
    monkeypatch.setattr(course.manifest, "NOTEBOOK_DIR", folder)  # where Lesson.path looks
    return folder


def test_course_keeps_going_reports_failures_resumes_and_writes_the_report(two_notebooks, results_dir, capsys):
    state = runner.run_course()
    assert state["00_measuring_cost"]["status"] == "ok"
    failed = state["01_fine_tune_dont_pretrain"]
    assert failed["status"] == "failed" and "the saving did not show up" in failed["error"]
    assert "cell 1: raise RuntimeError" in failed["error"]  # where it failed, not only what
    out = capsys.readouterr().out
    assert "FAILED 01_fine_tune_dont_pretrain" in out and "RuntimeError: the saving did not show up" in out
    assert (results_dir / "notebooks" / "00_measuring_cost.ipynb").exists()
    assert (results_dir / "notebooks" / "01_fine_tune_dont_pretrain.ipynb").exists()  # kept, failure included
    saved = json.loads((results_dir / "course_state.json").read_text())
    assert saved["00_measuring_cost"]["seconds"] > 0 and saved["00_measuring_cost"]["profile"] == "smoke"
    html = (results_dir / "report.html").read_text()
    assert 'data-lesson="00_measuring_cost" data-status="measured"' in html and "2.00x" in html
    assert 'data-lesson="02_lora" data-status="not run"' in html
    assert "the saving did not show up" in html  # the course-run table says why

    again = runner.run_course()  # resume: the passed notebook is skipped, the failed one reruns
    out = capsys.readouterr().out
    assert "00_measuring_cost: already executed" in out and again["00_measuring_cost"]["status"] == "ok"
    assert "01_fine_tune_dont_pretrain: failed" in out  # a failed notebook is never skipped


def test_a_relative_results_folder_gets_the_ledger_beside_the_state(two_notebooks, tmp_path, monkeypatch):
    """Kernels run in the notebook's folder: a relative COSTLAB_RESULTS (as `make reference` and
    `make soak` pass) must still put every notebook's ledger where the course writes its state."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COSTLAB_RESULTS", "relative/results")
    runner.run_course(only=["00_measuring_cost"], report=False)
    results = tmp_path / "relative" / "results"
    assert (results / "course_state.json").is_file()
    assert [json.loads(line)["variant"] for line in (results / "ledger.jsonl").read_text().splitlines()] == ["base", "half"]
    assert not (two_notebooks / "relative").exists()  # not beside the notebook


def test_ctrl_c_stops_the_course_instead_of_failing_the_notebook(two_notebooks, results_dir, tmp_path):
    started = tmp_path / "started"
    _notebook(two_notebooks / "00_measuring_cost.ipynb",
              f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\ntime.sleep(300)")
    script = ("import sys, pathlib\nfrom costlab import course\nfrom costlab.__main__ import main\n"
              f"course.manifest.NOTEBOOK_DIR = pathlib.Path({str(two_notebooks)!r})\nsys.exit(main(['course']))")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert started.exists(), "the first notebook never started"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    state = json.loads((results_dir / "course_state.json").read_text()) if (results_dir / "course_state.json").exists() else {}
    assert "00_measuring_cost" not in state  # not recorded as failed: the next run resumes from it
    assert "01_fine_tune_dont_pretrain" not in state  # and the course did not go on to the next one


def test_only_accepts_spaces_commas_and_lists():
    from costlab.course.runner import split_names

    assert split_names(["02,04_gradient_checkpointing"]) == split_names(["02 04_gradient_checkpointing"]) \
        == split_names(["02", "04_gradient_checkpointing"]) == ["02", "04_gradient_checkpointing"]
    assert split_names(None) == [] and split_names([" , "]) == []


def test_every_track_names_lessons_that_exist():
    from costlab import course

    for name, numbers in course.TRACKS.items():
        assert numbers, name
        for number in course.track(name):
            assert course.lesson(number).path.exists(), (name, number)


def test_an_unknown_track_names_the_tracks():
    import pytest

    from costlab import course

    with pytest.raises(KeyError, match="tracks: workshop"):
        course.track("weekend")
