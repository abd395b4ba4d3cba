"""A reference run to read before running: `make reference` executes the course at one profile
and packages it under reference/<profile>/ with this module.

    python -m costlab reference --results results/reference-cpu --out reference/cpu

What goes in: each executed notebook, slimmed (widget state dropped: it needs a live kernel; plots
kept as PNG, shrunk to a readable width; absolute paths of the machine that ran it replaced), with
a first cell naming the commit, machine and profile it ran under; the run's ledger.jsonl and
report.html; and a README.md listing each lesson's minutes. The learner's own report puts the
reference's headline ratios beside theirs (`reference_groups`).
"""
from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import os
import shutil
from pathlib import Path

from .. import course, ledger
from ..provenance import git_state

ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DIR = ROOT / "reference"
MAX_BYTES = 20 * 2**20  # the whole reference/ folder stays small enough to clone and browse
MAX_PNG_WIDTH = 900  # px: a plot read on a page, not printed
WIDGET_MIME = ("application/vnd.jupyter.widget-view+json", "application/vnd.jupyter.widget-state+json")
STAMP_KEY = "costlab_reference"  # notebook metadata: {commit, machine, profile, date}


def stamp(commit: str, machine: str, profile: str, date: str | None = None) -> dict:
    return {"commit": commit, "machine": machine, "profile": profile,
            "date": date or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")}


def _shrink_png(data: str) -> str:
    """A base64 PNG no wider than MAX_PNG_WIDTH (aspect kept); smaller ones unchanged."""
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(data)))
    if image.width <= MAX_PNG_WIDTH:
        return data
    height = round(image.height * MAX_PNG_WIDTH / image.width)
    out = io.BytesIO()
    image.resize((MAX_PNG_WIDTH, height), Image.LANCZOS).save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def _scrub(text: str, replacements: dict[str, str]) -> str:
    for old, new in replacements.items():
        text = text.replace(old, new)
    return text


def _path_replacements() -> dict[str, str]:
    """Machine paths that tracebacks and warnings print: the repo first (longest), then home."""
    out = {str(ROOT): "<repo>"}
    home = os.path.expanduser("~")
    if home not in ("", "/"):
        out[home] = "~"
    return out


def slim(nb, mark: dict):
    """The executed notebook as the reference keeps it (modified in place and returned)."""
    import nbformat

    replacements = _path_replacements()
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            for mime in WIDGET_MIME:  # a progress bar's text/plain stays; the widget needs a kernel
                data.pop(mime, None)
            if "image/png" in data:
                data["image/png"] = _shrink_png(data["image/png"])
            for key in ("text/plain", "text/html"):
                if key in data:
                    data[key] = _scrub("".join(data[key]), replacements)
            if "text" in output:
                output["text"] = _scrub("".join(output["text"]), replacements)
            if "traceback" in output:
                output["traceback"] = [_scrub(line, replacements) for line in output["traceback"]]
    nb.metadata[STAMP_KEY] = mark
    note = (f"**Reference run** · commit `{mark['commit']}` · {mark['machine']} · profile "
            f"`{mark['profile']}` · {mark['date']}. These outputs were measured on that machine; "
            "yours will differ with your hardware. Run the notebook to measure your own.")
    nb.cells.insert(0, nbformat.v4.new_markdown_cell(note, metadata={"tags": [STAMP_KEY]}))
    return nb


def _machine(records: list[dict]) -> str:
    from .scoreboard import hardware_label

    devices = [r["device"] for r in records if isinstance(r.get("device"), dict)]
    return hardware_label(devices[0]) if devices else "unknown machine"


def _minutes(results: Path) -> dict[str, float]:
    try:
        state = json.loads((results / "course_state.json").read_text())
    except (OSError, ValueError):
        return {}
    return {name: round(v["seconds"] / 60, 1) for name, v in state.items()
            if isinstance(v, dict) and isinstance(v.get("seconds"), (int, float))}


def package(results: str | Path, out: str | Path, profile: str) -> Path:
    """results/ of a course run -> out/ (the reference folder for that profile)."""
    import nbformat

    results, out = Path(results), Path(out)
    executed = sorted((results / "notebooks").glob("*.ipynb"))
    if not executed:
        raise FileNotFoundError(f"no executed notebooks under {results / 'notebooks'}: run the course "
                                f"first (make reference runs it)")
    commit, dirty = git_state()
    if commit is None:
        raise RuntimeError("a reference run names its commit: run it inside the git checkout")
    records = ledger.read(results / "ledger.jsonl")
    mark = stamp(_commit_label(commit, dirty), _machine(records), profile)
    # each lesson names the commit its records were made at (a lesson rerun later differs), else today's
    ran_at = {l.name: mark["commit"] for l in course.LESSONS}
    ran_at.update(_commits(records))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    names = {l.name for l in course.LESSONS}
    for path in executed:
        if path.stem not in names:
            continue  # a notebook of an older manifest: not this course's reference
        nb = slim(nbformat.read(path, as_version=4), {**mark, "commit": ran_at[path.stem]})
        nbformat.write(nb, out / path.name)
    from . import report

    if (results / "ledger.jsonl").is_file():
        shutil.copy2(results / "ledger.jsonl", out / "ledger.jsonl")
    # the run's own report, rebuilt here: without an older reference beside it
    report.write(ledger.read_report(results / "ledger.jsonl"), out, report.load_state(results / "course_state.json"),
                 title=f"costlab reference run ({profile})")
    (out / "README.md").write_text(_readme(mark, _minutes(results), out, ran_at))
    size = folder_bytes(out.parent)
    if size > MAX_BYTES:
        raise RuntimeError(f"{out.parent} is {size / 2**20:.1f} MiB, over {MAX_BYTES / 2**20:.0f} MiB: "
                           f"shrink the plots (MAX_PNG_WIDTH) or keep fewer outputs")
    return out


def _readme(mark: dict, minutes: dict[str, float], out: Path, ran_at: dict[str, str]) -> str:
    """ran_at: lesson -> the commit it ran at."""
    packaged = [l.name for l in course.LESSONS if (out / f"{l.name}.ipynb").is_file()]
    commits = {ran_at[name] for name in packaged}
    at = f"commit `{commits.pop()}`" if len(commits) == 1 else "the commits in the table"
    rows = [f"| [{name}]({name}.ipynb) | {minutes.get(name, '—')} | `{ran_at[name]}` |" for name in packaged]
    return "\n".join([
        f"# Reference run, profile `{mark['profile']}`", "",
        f"Executed with `make reference` at {at} on {mark['machine']}, "
        f"{mark['date']}. Read a lesson here before you run it; `report.html` is this run's report, "
        "and your own report lists these headline ratios beside yours.", "",
        "| lesson | minutes | commit |", "|---|---|---|", *rows, ""])


def _commit_label(commit: str, dirty: bool | None) -> str:
    return commit + ("+local changes" if dirty else "")


def _commits(records: list[dict]) -> dict[str, str]:
    """notebook -> the commit its records were made at (marked when the tree had changes)."""
    return {r["notebook"]: _commit_label(prov["git_commit"], prov.get("git_dirty"))
            for r in records if (prov := r.get("provenance") or {}).get("git_commit")}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def reference_groups(root: Path | None = None) -> list[tuple[str, object]]:
    """(caption, scoreboard.Group) for each reference run under reference/<profile>/."""
    from . import scoreboard

    out = []
    for ledger_file in sorted((root or REFERENCE_DIR).glob("*/ledger.jsonl")):
        records = ledger.read(ledger_file)
        commits = {str((r.get("provenance") or {}).get("git_commit", ""))[:7] for r in records} - {""}
        for group in scoreboard.groups(records):
            out.append((f"reference run ({ledger_file.parent.name}, commit {', '.join(sorted(commits)) or '?'})", group))
    return out
