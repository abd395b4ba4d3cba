"""Claims as checks: each notebook ends by asserting its own saving and its quality bound.

    checks = Checks("02_lora")
    checks.saving("optimizer_state_bytes", full, lora, at_least=50)
    checks.quality("eval_loss", untuned, lora, bound=0.0)
    checks.verify()        # raises ClaimFailed listing every claim that did not hold

Where a saving is not expected on this hardware, pass `expected_here=False, reason=...`: the
claim is reported with what was measured and why, instead of failing or passing silently.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from . import metrics


class ClaimFailed(AssertionError):
    pass


@dataclass(frozen=True)
class Claim:
    text: str
    measured: str
    status: str  # "held", "FAILED", "not expected here"
    reason: str = ""


@dataclass
class Checks:
    notebook: str
    claims: list[Claim] = field(default_factory=list)

    def _add(self, text: str, ok: bool, measured: str, expected_here: bool = True, reason: str = "") -> bool:
        status = "held" if ok else ("not expected here" if not expected_here else "FAILED")
        claim = Claim(text, measured, status, reason)
        self.claims.append(claim)
        mark = {"held": "PASS", "FAILED": "FAIL", "not expected here": "INFO"}[status]
        # Why a claim is not expected here matters when it did not hold; a claim that held anyway
        # only says it was not asserted (the reason would contradict what was just measured).
        note = (f" ({reason})" if reason and not ok else " (not asserted on this hardware)" if not expected_here else "")
        print(f"[{mark}] {text}: measured {measured}{note}")
        return ok

    def saving(self, metric: str, before: float, after: float, *, at_least: float,
               expected_here: bool = True, reason: str = "") -> bool:
        """`after` is at least `at_least` times better than `before` in the metric's direction."""
        ratio = metrics.improvement_ratio(metric, before, after)
        return self._add(f"{metrics.spec(metric).label} at least {at_least:g}x better", ratio >= at_least,
                         f"{ratio:.2f}x ({metrics.format_value(metric, before)} -> "
                         f"{metrics.format_value(metric, after)})", expected_here, reason)

    def quality(self, metric: str, before: float, after: float, *, bound: float) -> bool:
        """Quality got worse by at most `bound` (metric units; 0 means 'no worse')."""
        worse_by = (after - before) if metrics.lower_is_better(metric) else (before - after)
        return self._add(f"{metrics.spec(metric).label} worse than the reference by at most {bound:.3g}",
                         worse_by <= bound, f"{before:.4g} -> {after:.4g} (worse by {worse_by:+.4g})")

    def at_most(self, text: str, value: float, limit: float, *, expected_here: bool = True,
                reason: str = "") -> bool:
        return self._add(text, value <= limit, f"{value:.4g} (limit {limit:.4g})", expected_here, reason)

    def at_least(self, text: str, value: float, floor: float, *, expected_here: bool = True,
                 reason: str = "") -> bool:
        return self._add(text, value >= floor, f"{value:.4g} (floor {floor:.4g})", expected_here, reason)

    def true(self, text: str, condition: bool, measured: str = "") -> bool:
        return self._add(text, bool(condition), measured or str(bool(condition)))

    def verify(self) -> None:
        failed = [c for c in self.claims if c.status == "FAILED"]
        if failed:
            raise ClaimFailed(f"{self.notebook}: {len(failed)} claim(s) did not hold:\n" + "\n".join(
                f"  - {c.text}: measured {c.measured}" for c in failed))
        held = sum(c.status == "held" for c in self.claims)
        print(f"{self.notebook}: {held} claim(s) held, "
              f"{len(self.claims) - held} reported as not expected on this hardware")
