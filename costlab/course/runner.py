"""`make course`: execute every notebook of the manifest headless, keep going past failures,
resume where a previous run stopped, and write executed copies + the report under results/.

results/course_state.json remembers, per notebook, the fingerprint it ran under (commit, profile,
notebook hash), its status, run time and error; a notebook whose fingerprint matches and that
passed is skipped on the next run (`--force` reruns it). The report reads the run times from it.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import time
from pathlib import Path

from .. import course, ledger, profiles
from ..provenance import git_state

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # kernel tracebacks are coloured


def _fingerprint(lesson: course.Lesson, profile: str) -> str:
    commit, _ = git_state()
    digest = hashlib.sha256(lesson.path.read_bytes()).hexdigest()[:16]
    return f"{commit}:{profile}:{digest}"


def _failing_cell(nb) -> str:
    """'cell N: first line of its source' for the first cell with an error output."""
    for index, cell in enumerate(nb.cells):
        if any(out.get("output_type") == "error" for out in cell.get("outputs", [])):
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            return f"cell {index}: {first[:80]}"
    return ""


def run_notebook(lesson: course.Lesson, out_dir: Path, timeout_s: int = 3600, on_cell=None) -> str:
    """Execute one notebook; return "" on success, else why it failed (the failing cell and the
    error's last lines). The executed copy is written either way, failed cells included."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(lesson.path, as_version=4)
    total = len(nb.cells)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(lesson.path.parent)}})
    if on_cell:
        client.on_cell_start = lambda cell, cell_index: on_cell(cell_index + 1, total)
    try:
        client.execute()
        return ""
    except Exception as exc:  # CellExecutionError, a timeout, a dead kernel: all reported alike
        if getattr(client, "_async_cleanup_kernel_future", None) is not None:
            # nbclient (0.11) answers Ctrl-C / SIGTERM by shutting the kernel down and setting this
            # attribute; the cell then fails. That is the learner stopping the course, not the
            # notebook failing: stop here instead of recording a failure and starting the next one.
            raise KeyboardInterrupt(f"{lesson.name} interrupted") from exc
        text = ANSI.sub("", str(exc)).strip()
        tail = "\n".join(text.splitlines()[-15:])[-2000:]
        where = _failing_cell(nb)
        return f"{type(exc).__name__} in {where}\n{tail}" if where else f"{type(exc).__name__}\n{tail}"
    finally:
        nbformat.write(nb, out_dir / lesson.path.name)


def _last_line(error: str) -> str:
    lines = [line for line in error.splitlines() if line.strip()]
    return lines[-1] if lines else "see the executed notebook"


def _load_state(path: Path) -> dict:
    try:
        state = json.loads(path.read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):  # absent or corrupt: start afresh, never fail the course on it
        return {}


def split_names(only: list[str] | None) -> list[str]:
    """"02 04", "02,04" and ["02", "04"] all name the same lessons (so `make course ONLY=02,04` works)."""
    return [name for item in only or [] for name in item.replace(",", " ").split()]


def run_course(only: list[str] | None = None, force: bool = False, report: bool = True) -> dict[str, dict]:
    """Run the lessons (all present ones, or `only`); return {name: state} for the lessons of
    this invocation, skipped ones included."""
    from tqdm.auto import tqdm

    profile = profiles.get().name
    os.environ[profiles.PROFILE_ENV] = profile  # the kernels inherit it: notebooks see the same profile
    # Absolute, and exported: each kernel runs in notebooks/, where a relative COSTLAB_RESULTS
    # would put its ledger beside the notebooks instead of beside this run's state.
    results = ledger.results_dir().resolve()
    os.environ[ledger.RESULTS_ENV] = str(results)
    out_dir = results / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = results / "course_state.json"
    state = _load_state(state_path)
    only = split_names(only)
    lessons = [course.lesson(n) for n in only] if only else course.available()
    missing = [l.name for l in course.LESSONS if not l.path.exists()]
    if missing and not only:
        print(f"not yet written, skipped: {', '.join(missing)}")
    started_course = time.perf_counter()
    bar = tqdm(lessons, desc=f"course ({profile})", unit="notebook")
    try:
        _run_lessons(bar, state, state_path, out_dir, profile, force)
    except KeyboardInterrupt:
        bar.close()
        print("\ninterrupted: the notebook in progress is not recorded; `make course` resumes from it")
        if report:
            _write_report(results)
        raise
    bar.close()
    mine = {l.name: state[l.name] for l in lessons if l.name in state}
    _summary(mine, out_dir, time.perf_counter() - started_course)
    if report:
        _write_report(results)
    return mine


def _run_lessons(bar, state: dict, state_path: Path, out_dir: Path, profile: str, force: bool) -> None:
    """Execute each lesson of the progress bar unless it already passed under the same fingerprint,
    saving the state after each one so an interrupted course resumes where it stopped."""
    from tqdm.auto import tqdm

    for lesson in bar:
        bar.set_postfix_str(lesson.name)
        key = _fingerprint(lesson, profile)
        previous = state.get(lesson.name, {})
        if not force and previous.get("fingerprint") == key and previous.get("status") == "ok":
            tqdm.write(f"  {lesson.name}: already executed for this commit and profile "
                       f"({previous.get('seconds', 0):.0f} s then; --force to rerun)")
            continue
        started = time.perf_counter()
        error = run_notebook(lesson, out_dir,
                             on_cell=lambda i, n, name=lesson.name: bar.set_postfix_str(f"{name} cell {i}/{n}"))
        seconds = round(time.perf_counter() - started, 1)
        status = "failed" if error else "ok"
        state[lesson.name] = {"fingerprint": key, "profile": profile, "status": status, "seconds": seconds,
                              "error": error, "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        state_path.write_text(json.dumps(state, indent=2))
        tqdm.write(f"  {lesson.name}: {status} in {seconds:.0f} s" + (f"\n    {_last_line(error)}" if error else ""))


def _summary(mine: dict[str, dict], out_dir: Path, wall: float) -> None:
    failed = {k: v for k, v in mine.items() if v.get("status") != "ok"}
    print(f"\n{len(mine) - len(failed)} notebook(s) ok, {len(failed)} failed, in {wall:.0f} s; "
          f"executed copies in {out_dir}")
    for name, info in mine.items():
        print(f"  {name:<32} {info.get('status', '?'):<7} {float(info.get('seconds') or 0):7.1f} s")
    for name, info in failed.items():
        print(f"  FAILED {name}: {info.get('error', '').splitlines()[0] if info.get('error') else ''}\n"
              f"    {_last_line(info.get('error', ''))}")


def _write_report(results: Path) -> None:
    """The report is the course's product, but a bug in it must not hide the notebooks' results."""
    from . import report

    try:
        print(f"report: {report.from_results(results)}")
    except Exception as exc:  # noqa: BLE001 - say what went wrong and keep the course's exit status
        print(f"report.html could not be written: {type(exc).__name__}: {exc}")
