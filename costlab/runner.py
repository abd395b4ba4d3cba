"""`make course`: execute every notebook of the manifest headless, keep going past failures,
resume where a previous run stopped, and write executed copies + the report under results/."""
from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from pathlib import Path

from . import course, ledger, profiles
from .provenance import git_state


def _fingerprint(lesson: course.Lesson, profile: str) -> str:
    commit, _ = git_state()
    digest = hashlib.sha256(lesson.path.read_bytes()).hexdigest()[:16]
    return f"{commit}:{profile}:{digest}"


def run_notebook(lesson: course.Lesson, out_dir: Path, timeout_s: int = 3600) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(lesson.path, as_version=4)
    client = NotebookClient(nb, timeout=timeout_s, kernel_name="python3",
                            resources={"metadata": {"path": str(lesson.path.parent)}})
    try:
        client.execute()
    finally:  # keep the executed copy, failed cells included: it shows where and why
        nbformat.write(nb, out_dir / lesson.path.name)


def run_course(only: list[str] | None = None, force: bool = False) -> dict[str, dict]:
    from tqdm.auto import tqdm

    profile = profiles.get().name
    os.environ.setdefault(profiles.PROFILE_ENV, profile)  # notebooks see the same profile
    results = ledger.results_dir()
    out_dir = results / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = results / "course_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    lessons = [course.lesson(n) for n in only] if only else course.available()
    missing = [l.name for l in course.LESSONS if not l.path.exists()]
    if missing and not only:
        print(f"not yet written, skipped: {', '.join(missing)}")
    bar = tqdm(lessons, desc=f"course ({profile})", unit="notebook")
    for lesson in bar:
        bar.set_postfix_str(lesson.name)
        key = _fingerprint(lesson, profile)
        previous = state.get(lesson.name, {})
        if not force and previous.get("fingerprint") == key and previous.get("status") == "ok":
            tqdm.write(f"  {lesson.name}: already executed for this commit and profile (--force to rerun)")
            continue
        started = time.perf_counter()
        try:
            run_notebook(lesson, out_dir)
            status, error = "ok", ""
        except Exception as exc:  # keep going: one failing notebook must not stop the course
            status = "failed"
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()[-2000:]
        seconds = round(time.perf_counter() - started, 1)
        state[lesson.name] = {"fingerprint": key, "status": status, "seconds": seconds, "error": error}
        state_path.write_text(json.dumps(state, indent=2))
        tqdm.write(f"  {lesson.name}: {status} in {seconds:.0f} s" + (f"\n    {error.splitlines()[-1]}" if error else ""))
    failed = {k: v for k, v in state.items() if v["status"] != "ok"}
    print(f"\n{len(state) - len(failed)} notebook(s) ok, {len(failed)} failed; executed copies in "
          f"{out_dir}")
    for name, info in failed.items():
        print(f"  FAILED {name}: {info['error'].splitlines()[-1] if info['error'] else 'see notebook'}")
    return state
