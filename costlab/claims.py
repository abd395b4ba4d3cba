"""Claims read back from ledgers: each notebook's latest claims per machine, the claims that failed
on some machine (workshop merge), and the soak table (each claim's smallest margin over runs).

    python -m costlab soak-table results/soak/smoke-1 results/soak/smoke-2 results/soak/cpu-02

A claim line is written by `Checks.verify()` (costlab.expect); its margin is how far inside its
threshold the measured value was, as a share of the threshold (negative: outside).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .course import scoreboard
from . import ledger
from .expect import FRAGILE_MARGIN


def machine(line: dict) -> str:
    """Where a claim was measured: the hardware label and the profile."""
    device = line.get("device") if isinstance(line.get("device"), dict) else {}
    return f"{scoreboard.hardware_label(device)} · {line.get('profile')}"


def key(line: dict) -> tuple[str, str]:
    """(notebook, text); a text that one run repeats (06 checks int8 and NF4 alike) gets #2, #3."""
    text, nth = str(line["claim"].get("text")), line.get("_nth", 1)
    return str(line.get("notebook")), text + (f" #{nth}" if nth > 1 else "")


def numbered(lines: list[dict]) -> list[dict]:
    """The lines with `_nth`: which occurrence of its text within its run each claim is."""
    seen: dict[tuple, int] = {}
    out = []
    for line in lines:
        k = (machine(line), str(line.get("run_id")), str(line.get("notebook")), str(line["claim"].get("text")))
        seen[k] = seen.get(k, 0) + 1
        out.append({**line, "_nth": seen[k]})
    return out


def latest(lines: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(machine, notebook) -> the claims of that notebook's newest run on that machine."""
    runs: dict[tuple[str, str], dict[str, list[dict]]] = {}
    for line in lines:  # file order: a later run of the same notebook replaces an earlier one
        by_run = runs.setdefault((machine(line), str(line.get("notebook"))), {})
        run = str(line.get("run_id"))
        claims = by_run.pop(run, [])  # re-inserted: the run with the newest line ends up last
        claims.append(line)
        by_run[run] = claims
    return {k: list(v.values())[-1] for k, v in runs.items()}


@dataclass
class Failure:
    notebook: str
    text: str
    failed_on: dict[str, str] = field(default_factory=dict)  # machine -> what was measured
    held_on: list[str] = field(default_factory=list)


def failures(lines: list[dict]) -> list[Failure]:
    """Claims that failed on at least one machine (their newest run there), with where they held."""
    found: dict[tuple[str, str], Failure] = {}
    newest = latest(numbered(lines))
    for (where, _), claims in newest.items():
        for line in claims:
            if line["claim"].get("status") == "FAILED":
                f = found.setdefault(key(line), Failure(*key(line)))
                f.failed_on[where] = str(line["claim"].get("measured", ""))
    for (where, _), claims in newest.items():
        for line in claims:
            f = found.get(key(line))
            if f and line["claim"].get("status") == "held":
                f.held_on.append(where)
    return sorted(found.values(), key=lambda f: (f.notebook, f.text))


@dataclass
class SoakRow:
    notebook: str
    text: str
    smallest_margin: float | None  # over the runs (None: a yes/no claim)
    runs: int
    failed: int
    profiles: dict[str, int]
    asserted: bool
    narrow_because: str = ""  # the notebook's reason the margin is small by nature (on the tightest run)

    @property
    def narrow(self) -> bool:
        return self.asserted and self.smallest_margin is not None and self.smallest_margin < FRAGILE_MARGIN

    @property
    def explained(self) -> bool:
        """Narrow, never failed, and the notebook says why the margin is small by nature."""
        return self.narrow and self.failed == 0 and bool(self.narrow_because)

    @property
    def fragile(self) -> bool:
        return self.asserted and (self.failed > 0 or (self.narrow and not self.explained))


def soak_rows(lines: list[dict]) -> list[SoakRow]:
    """One row per claim (notebook, text) over every run in `lines`; its smallest margin is taken
    over the runs that asserted it (over all runs if none did)."""
    grouped: dict[tuple[str, str], list[dict]] = {}
    for line in numbered(lines):
        grouped.setdefault(key(line), []).append(line)
    rows = []
    for (notebook, text), found in grouped.items():
        # A claim asserted on some runs and only reported on others (02's 25% form is asserted on
        # the whole model, reported on smoke's truncated one) is judged on the runs that asserted it.
        asserted = [c for c in found if c["claim"].get("asserted", True)]
        judged = asserted or found
        with_margin = [c for c in judged if isinstance(c["claim"].get("margin"), (int, float))]
        tightest = min(with_margin, key=lambda c: c["claim"]["margin"]) if with_margin else None
        profiles: dict[str, int] = {}
        for c in found:
            profiles[str(c.get("profile"))] = profiles.get(str(c.get("profile")), 0) + 1
        rows.append(SoakRow(notebook, text, tightest["claim"]["margin"] if tightest else None,
                            len({str(c.get("run_id")) for c in found}),
                            sum(c["claim"].get("status") == "FAILED" for c in found), profiles, bool(asserted),
                            str(tightest["claim"].get("narrow_because") or "") if tightest else ""))
    return sorted(rows, key=lambda r: (r.notebook, r.text))


def read_dirs(paths: list[Path]) -> list[dict]:
    """Claim lines of each results directory's ledger.jsonl (or of a ledger file itself)."""
    lines = []
    for p in paths:
        lines += ledger.read_claims(p / "ledger.jsonl" if Path(p).is_dir() else p)
    return lines


def soak_table(rows: list[SoakRow], width: int = 70) -> str:
    """Plain-text table: claim, notebook, smallest margin, runs, failed, and a fragile mark."""
    out = [f"{'claim':<{width}}  {'notebook':<26} {'min margin':>10} {'runs':>5} {'failed':>6}  profiles"]
    for r in rows:
        text = r.text if len(r.text) <= width else r.text[:width - 1] + "…"
        m = f"{r.smallest_margin:+.0%}" if r.smallest_margin is not None else "yes/no"
        mark = ("  FRAGILE" if r.fragile else f"  narrow, explained: {r.narrow_because}" if r.explained
                else "" if r.asserted else "  (reported, not asserted)")
        profiles = ", ".join(f"{p}x{n}" for p, n in sorted(r.profiles.items()))
        out.append(f"{text:<{width}}  {r.notebook:<26} {m:>10} {r.runs:>5} {r.failed:>6}  {profiles}{mark}")
    fragile, explained = sum(r.fragile for r in rows), sum(r.explained for r in rows)
    out.append(f"{len(rows)} claim(s); {fragile} fragile (failed, or under {FRAGILE_MARGIN:.0%} margin on some run "
               f"with no reason given); {explained} narrow by nature, with the notebook's reason")
    return "\n".join(out)


def main(paths: list[Path]) -> int:
    lines = read_dirs(paths)
    if not lines:
        print(f"no claim lines in {', '.join(map(str, paths))} (claims are written by s.checks.verify())")
        return 1
    rows = soak_rows(lines)
    print(soak_table(rows))
    return 1 if any(r.failed for r in rows) else 0
