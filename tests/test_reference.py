"""costlab.course.reference: the reference run a learner reads before running (make reference),
and the report that puts its headline ratios beside the learner's."""
import base64
import io
import json

import nbformat
import pytest
from PIL import Image

from costlab import course
from costlab.course import reference, report

LESSON = course.LESSONS[0].name


def _png(width: int, height: int) -> str:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode("ascii")


def _executed_notebook():
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": 1}}}
    cell = nbformat.v4.new_code_cell("train()")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
            "text/plain": "steps: 100%|##########| 8/8"}),
        nbformat.v4.new_output("display_data", data={"image/png": _png(2000, 1000), "text/plain": "<Figure>"}),
        nbformat.v4.new_output("stream", name="stderr", text=f"warning in {reference.ROOT}/costlab/train.py:3\n"),
    ]
    nb.cells.append(cell)
    return nb


def test_slim_drops_widget_state_shrinks_plots_and_hides_machine_paths():
    nb = reference.slim(_executed_notebook(), reference.stamp("abc1234", "cpu: AMD EPYC (2 cores)", "cpu"))
    assert "widgets" not in nb.metadata
    outputs = nb.cells[1].outputs
    assert "application/vnd.jupyter.widget-view+json" not in outputs[0]["data"]
    assert "8/8" in outputs[0]["data"]["text/plain"]  # the progress bar's text stays readable
    image = Image.open(io.BytesIO(base64.b64decode(outputs[1]["data"]["image/png"])))
    assert image.size == (reference.MAX_PNG_WIDTH, reference.MAX_PNG_WIDTH // 2)
    assert str(reference.ROOT) not in outputs[2]["text"] and "<repo>/costlab/train.py" in outputs[2]["text"]
    # the first cell and the metadata name the commit, the machine and the profile
    assert "abc1234" in nb.cells[0].source and "AMD EPYC" in nb.cells[0].source
    assert nb.metadata[reference.STAMP_KEY]["commit"] == "abc1234"


def _results(tmp_path):
    results = tmp_path / "run"
    (results / "notebooks").mkdir(parents=True)
    nbformat.write(_executed_notebook(), results / "notebooks" / f"{LESSON}.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), results / "notebooks" / "99_gone_lesson.ipynb")
    record = {"schema_version": 1, "notebook": LESSON, "variant": "baseline", "baseline": None,
              "profile": "cpu", "device": {"kind": "cpu", "name": "AMD EPYC", "count": 2},
              "metrics": {"step_time_sec": 1.0}, "quality": {}, "extra": {},
              "provenance": {"git_commit": "abc1234def", "git_dirty": False}}
    (results / "ledger.jsonl").write_text(json.dumps(record) + "\n")
    (results / "course_state.json").write_text(json.dumps({LESSON: {"status": "ok", "seconds": 90.0}}))
    return results


def test_package_writes_slim_notebooks_ledger_report_and_minutes(tmp_path):
    out = reference.package(_results(tmp_path), tmp_path / "reference" / "cpu", "cpu")
    assert (out / f"{LESSON}.ipynb").is_file()
    assert not (out / "99_gone_lesson.ipynb").exists()  # not a lesson of this course
    assert (out / "ledger.jsonl").is_file() and "reference run" in (out / "report.html").read_text()
    readme = (out / "README.md").read_text()
    assert f"| [{LESSON}]({LESSON}.ipynb) | 1.5 | `abc1234def` |" in readme  # 90 s of the run's state
    nb = nbformat.read(out / f"{LESSON}.ipynb", as_version=4)
    # the commit the lesson's records were made at, not the checkout's HEAD at packaging time
    assert nb.metadata[reference.STAMP_KEY]["commit"] == "abc1234def"
    assert nb.metadata[reference.STAMP_KEY]["profile"] == "cpu"
    assert nb.metadata[reference.STAMP_KEY]["machine"] == "cpu: AMD EPYC (2 cores)"


def test_package_without_a_course_run_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="run the course first"):
        reference.package(tmp_path, tmp_path / "out", "cpu")


def test_the_learners_report_shows_the_reference_beside_theirs(tmp_path):
    reference.package(_results(tmp_path), tmp_path / "reference" / "cpu", "cpu")
    groups = reference.reference_groups(tmp_path / "reference")
    assert [caption for caption, _ in groups] == ["reference run (cpu, commit abc1234)"]
    read = report.ledger.read_report(tmp_path / "run" / "ledger.jsonl")
    html = report.build(read, reference=groups)
    assert 'id="beside-reference"' in html and "reference run (cpu, commit abc1234)" in html
    assert 'id="beside-reference"' not in report.build(read)


REFERENCE_NOTEBOOKS = sorted(reference.REFERENCE_DIR.glob("*/*.ipynb"))


@pytest.mark.parametrize("path", REFERENCE_NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_reference_notebook_names_its_commit_and_its_lesson_still_exists(path):
    nb = nbformat.read(path, as_version=4)
    mark = nb.metadata.get(reference.STAMP_KEY, {})
    assert mark.get("commit") and mark.get("profile") == path.parent.name
    assert path.stem in {lesson.name for lesson in course.LESSONS}


def test_the_reference_folder_stays_small():
    if not reference.REFERENCE_DIR.exists():
        pytest.skip("no reference run committed yet (make reference writes reference/cpu/)")
    assert reference.folder_bytes(reference.REFERENCE_DIR) <= reference.MAX_BYTES
