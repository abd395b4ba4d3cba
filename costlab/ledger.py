"""The results ledger: append-only JSON lines, one per measured variant (its keys: REQUIRED_KEYS below).

A run killed mid-write leaves at most a torn last line; `read` skips it (and any other line
that is not a valid record) and counts what it skipped, so earlier records are never lost.

Claims (costlab.expect) are lines of their own kind, `"kind": "claim"`, beside the variants:
notebook, profile, device, run_id, provenance and the claim (text, value, threshold, direction,
margin, status, asserted). `read` returns variant records only, as before; `read_claims` the claims.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import hardware, metrics
from .provenance import provenance

SCHEMA_VERSION = 1
RESULTS_ENV = "COSTLAB_RESULTS"
REQUIRED_KEYS = ("schema_version", "notebook", "variant", "profile", "device", "metrics", "provenance")
CLAIM_KIND = "claim"
CLAIM_KEYS = ("schema_version", "kind", "notebook", "profile", "device", "claim", "provenance")


def results_dir() -> Path:
    path = Path(os.environ.get(RESULTS_ENV) or Path(__file__).resolve().parent.parent / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def finite_or_none(value: float) -> float | None:
    """The ledger stores numbers only: 'never reached' (infinite) or undefined (nan) is left out
    as None, like a value that was not measured."""
    return value if math.isfinite(value) else None


def default_path() -> Path:
    return results_dir() / "ledger.jsonl"


def _clean(values: dict | None, kind: str) -> dict:
    """Validate names against the vocabulary and drop unmeasured (None) values."""
    out = {}
    for name, value in (values or {}).items():
        metrics.spec(name)  # raises UnknownMetric with the list of known names
        if value is None:
            continue
        if not isinstance(value, (int, float)):
            raise TypeError(f"{kind} {name!r} must be a number, got {type(value).__name__}")
        out[name] = value
    return out


def make_record(notebook: str, variant: str, *, metrics_: dict, quality: dict | None = None,
                baseline: str | None = None, estimated: list[str] | tuple = (),
                profile: str | None = None, extra: dict | None = None) -> dict:
    from . import profiles

    cost = _clean(metrics_, "metric")
    qual = _clean(quality, "quality")
    unknown = set(estimated) - set(cost) - set(qual)
    if unknown:
        raise ValueError(f"estimated names {sorted(unknown)} are not among the recorded values")
    return {
        "schema_version": SCHEMA_VERSION, "notebook": notebook, "variant": variant,
        "baseline": baseline, "profile": profile or profiles.get().name,
        "device": hardware.device_record(), "metrics": cost, "quality": qual,
        "estimated": sorted(estimated), "extra": extra or {}, "provenance": provenance(),
    }


def make_claim_record(notebook: str, claim: dict, *, profile: str, run_id: str | None = None) -> dict:
    """One claim's ledger line (see the module docstring); `claim` is expect.Claim.as_dict()."""
    return {"schema_version": SCHEMA_VERSION, "kind": CLAIM_KIND, "notebook": notebook, "profile": profile,
            "device": hardware.device_record(), "claim": dict(claim), "run_id": run_id,
            "provenance": provenance()}


def append(record: dict, path: str | Path | None = None) -> dict:
    """Append one record as one line; a single write + fsync so a crash tears at most this line."""
    target = Path(path) if path else default_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
    # If an earlier run was killed mid-line, start ours on a fresh line so both stay readable.
    if target.exists() and target.stat().st_size:
        with open(target, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                line = "\n" + line
    with open(target, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return record


def record(notebook: str, variant: str, *, metrics: dict, quality: dict | None = None,
           baseline: str | None = None, estimated=(), profile: str | None = None,
           extra: dict | None = None, path: str | Path | None = None) -> dict:
    """Build a schema-valid record with provenance and append it to the ledger."""
    rec = make_record(notebook, variant, metrics_=metrics, quality=quality, baseline=baseline,
                      estimated=estimated, profile=profile, extra=extra)
    return append(rec, path)


@dataclass
class ReadReport:
    records: list[dict] = field(default_factory=list)
    skipped_malformed: int = 0  # torn or non-JSON lines
    skipped_foreign: int = 0  # JSON, but not a costlab record of a schema we know
    claims: list[dict] = field(default_factory=list)  # claim lines (kind "claim"), in file order


def is_record(obj) -> bool:
    return (isinstance(obj, dict) and all(k in obj for k in REQUIRED_KEYS)
            and obj.get("schema_version") == SCHEMA_VERSION and isinstance(obj.get("metrics"), dict))


def is_claim(obj) -> bool:
    return (isinstance(obj, dict) and obj.get("kind") == CLAIM_KIND and all(k in obj for k in CLAIM_KEYS)
            and obj.get("schema_version") == SCHEMA_VERSION and isinstance(obj.get("claim"), dict)
            and isinstance(obj["claim"].get("text"), str))


def read_report(path: str | Path) -> ReadReport:
    report = ReadReport()
    path = Path(path)
    if not path.is_file():  # missing, or a directory handed in by mistake: nothing to read
        return report
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                report.skipped_malformed += 1
                continue
            if is_record(obj):
                report.records.append(obj)
            elif is_claim(obj):
                report.claims.append(obj)
            else:
                report.skipped_foreign += 1
    return report


def read(path: str | Path | None = None) -> list[dict]:
    """The ledger's records as dicts, skipping torn or foreign lines."""
    return read_report(path or default_path()).records


def read_claims(path: str | Path | None = None) -> list[dict]:
    """The ledger's claim lines as dicts (kind "claim"), skipping everything else."""
    return read_report(path or default_path()).claims


def merge(paths, out: str | Path) -> ReadReport:
    """Combine several learners' ledgers into one file (workshop); bad lines are counted, not fatal."""
    merged = ReadReport()
    seen: set[str] = set()
    for p in paths:
        part = read_report(p)
        merged.skipped_malformed += part.skipped_malformed
        merged.skipped_foreign += part.skipped_foreign
        for kept, lines in ((merged.records, part.records), (merged.claims, part.claims)):
            for rec in lines:
                key = json.dumps(rec, sort_keys=True)
                if key not in seen:  # the same ledger handed in twice counts once
                    seen.add(key)
                    kept.append(rec)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for rec in merged.records + merged.claims:
            f.write(json.dumps(rec, sort_keys=True) + "\n")
    return merged


def latest(records: list[dict], notebook: str) -> dict[str, dict]:
    """The newest record of each variant of one notebook (later lines win)."""
    out: dict[str, dict] = {}
    for rec in records:
        if rec["notebook"] == notebook:
            out[rec["variant"]] = rec
    return out
