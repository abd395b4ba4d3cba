"""What every notebook starts with: its profile, device, checks and a ledger bound to its name.

    s = costlab.start("02_lora")
    s.record("lora_r8", metrics={...}, quality={...}, baseline="full")
    costlab.compare.table(s.records(), baseline="full")
    s.checks.saving(...); s.checks.verify()
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from . import course, hardware, ledger, profiles
from .expect import Checks


@dataclass
class Session:
    notebook: str
    profile: profiles.Profile
    device: hardware.Device
    checks: Checks
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def record(self, variant: str, *, metrics: dict, quality: dict | None = None,
               baseline: str | None = None, estimated=(), extra: dict | None = None) -> dict:
        """Append one measured variant to the ledger (with provenance) and return the record."""
        return ledger.record(self.notebook, variant, metrics=metrics, quality=quality, baseline=baseline,
                             estimated=estimated, profile=self.profile.name,
                             extra={**(extra or {}), "run_id": self.run_id})

    def record_isolated(self, variant: str, result: dict, *, baseline: str | None = None,
                        extra: dict | None = None) -> dict:
        """Record what `costlab.isolate` returned (its peak memory joins the metrics); `extra` adds
        to the run's own (e.g. {"headline": True} to make this the variant the report shows)."""
        return self.record(variant, metrics={**result["metrics"], "peak_mem_bytes": result["peak_mem_bytes"]},
                           quality=result.get("quality"), baseline=baseline,
                           estimated=result.get("estimated", ()),
                           extra={**result.get("extra", {}), "peak_mem_kind": result.get("peak_mem_kind"),
                                  **(extra or {})})

    def records(self) -> list[dict]:
        """This run's records, newest per variant, in the order they were first recorded."""
        mine = [r for r in ledger.read() if r["notebook"] == self.notebook
                and r.get("extra", {}).get("run_id") == self.run_id]
        return list({r["variant"]: r for r in mine}.values())


def start(notebook: str, profile: str | None = None) -> Session:
    lesson = course.lesson(notebook)
    session = Session(lesson.name, profiles.get(profile), hardware.detect(), Checks(lesson.name))
    session.checks.session = session  # verify() writes each claim to the ledger under this run's id
    d = session.device
    memory = f"{d.memory_bytes / 2**30:.0f} GiB" if d.memory_bytes else "unknown memory"
    print(f"{lesson.name} | profile {session.profile.name} | {d.kind}: {d.name} x{d.count}, {memory} | "
          f"results -> {ledger.RESULTS_ENV}={ledger.results_dir().name}/")
    return session
