"""Claims as checks: each notebook ends by asserting its own saving and its quality bound.

    checks = Checks("02_lora")
    checks.saving("optimizer_state_bytes", full, lora, at_least=50)
    checks.quality("eval_loss", untuned, lora, bound=0.0)
    checks.verify()        # raises ClaimFailed listing every claim that did not hold

Where a saving is not expected on this hardware, pass `expected_here=False, reason=...`: the
claim is reported with what was measured and why, instead of failing or passing silently.

A claim is data too: its measured value, its threshold (a floor to stay at or above, or a limit
to stay at or below), its margin and whether it was asserted here. `verify()` appends one
ledger line per claim (through the session that made the Checks) before it raises, so a failed
claim is on record. The margin is how far inside its threshold the value is, as a share of the
threshold: `(value - floor) / |floor|` for a floor, `(limit - value) / |limit|` for a limit, so
positive means inside and negative outside on both sides (1.27x against a 1.5x floor: -15%;
2.0x: +33%). A quality claim's value is how much worse the variant is and its limit the bound,
so its margin is the share of the allowed loss left unused (a bound of 0 is measured against
the reference value instead).

A claim whose margin is small by nature passes `narrow_because=...`: why (a byte count that is
the same on every run; a share that cannot exceed 1). The reason is recorded with the claim and
printed when the margin is under 10%, and the soak table marks the claim as explained instead of
fragile. It changes no threshold: the claim is asserted as before.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from . import metrics

FRAGILE_MARGIN = 0.10  # under this margin, an asserted claim may fail on the next run unless its notebook says why not


class ClaimFailed(AssertionError):
    pass


@dataclass(frozen=True)
class Claim:
    text: str
    measured: str
    status: str  # "held", "FAILED", "not expected here"
    reason: str = ""
    value: float | None = None  # the number compared with the threshold (None: not a finite number)
    threshold: float | None = None
    direction: str = "at_least"  # "at_least" (a floor) or "at_most" (a limit)
    margin: float | None = None  # see the module docstring; None for a yes/no claim
    asserted: bool = True  # False: reported only (not expected on this hardware)
    metric: str = ""
    narrow_because: str = ""  # why the margin is small by nature (see the module docstring)

    def as_dict(self) -> dict:
        return asdict(self)


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def margin(value: float | None, threshold: float, direction: str, scale: float | None = None) -> float | None:
    """How far inside its threshold `value` is, as a share of `scale` (default |threshold|):
    positive inside, negative outside, for a floor ("at_least") and a limit ("at_most") alike."""
    if direction not in ("at_least", "at_most"):
        raise ValueError(f"direction must be 'at_least' or 'at_most', got {direction!r}")
    if value is None or not math.isfinite(value):
        # an infinite ratio (the variant costs 0) is as far inside a floor as it gets
        return math.inf if value == math.inf and direction == "at_least" else None
    slack = (value - threshold) if direction == "at_least" else (threshold - value)
    scale = abs(scale if scale else threshold) or abs(value)
    if not scale:
        return 0.0
    return slack / scale


@dataclass
class Checks:
    notebook: str
    claims: list[Claim] = field(default_factory=list)
    session: object = field(default=None, repr=False)  # a costlab Session: verify() writes the claims to its ledger
    _written: int = field(default=0, repr=False)

    def _add(self, text: str, ok: bool, measured: str, expected_here: bool = True, reason: str = "",
             value: float | None = None, threshold: float | None = None, direction: str = "at_least",
             metric: str = "", scale: float | None = None, narrow_because: str = "") -> bool:
        status = "held" if ok else ("not expected here" if not expected_here else "FAILED")
        m = margin(_finite(value), threshold, direction, scale) if threshold is not None else None
        claim = Claim(text, measured, status, reason, _finite(value), _finite(threshold), direction,
                      m if m is None or math.isfinite(m) else None, expected_here, metric, narrow_because)
        self.claims.append(claim)
        mark = {"held": "PASS", "FAILED": "FAIL", "not expected here": "INFO"}[status]
        # Why a claim is not expected here matters when it did not hold; a claim that held anyway
        # only says it was not asserted (the reason would contradict what was just measured).
        note = (f" ({reason})" if reason and not ok else " (not asserted on this hardware)" if not expected_here else "")
        inside = f", margin {claim.margin:+.0%}" if claim.margin is not None else ""
        if ok and narrow_because and claim.margin is not None and claim.margin < FRAGILE_MARGIN:
            inside += f" (narrow by nature: {narrow_because})"
        print(f"[{mark}] {text}: measured {measured}{inside}{note}")
        return ok

    def saving(self, metric: str, before: float, after: float, *, at_least: float,
               expected_here: bool = True, reason: str = "", narrow_because: str = "") -> bool:
        """`after` is at least `at_least` times better than `before` in the metric's direction."""
        ratio = metrics.improvement_ratio(metric, before, after)
        return self._add(f"{metrics.spec(metric).label} at least {at_least:g}x better", ratio >= at_least,
                         f"{ratio:.2f}x ({metrics.format_value(metric, before)} -> "
                         f"{metrics.format_value(metric, after)})", expected_here, reason,
                         value=ratio, threshold=at_least, metric=metric, narrow_because=narrow_because)

    def quality(self, metric: str, before: float, after: float, *, bound: float, narrow_because: str = "") -> bool:
        """Quality got worse by at most `bound` (metric units; 0 means 'no worse')."""
        worse_by = (after - before) if metrics.lower_is_better(metric) else (before - after)
        return self._add(f"{metrics.spec(metric).label} worse than the reference by at most {bound:.3g}",
                         worse_by <= bound, f"{before:.4g} -> {after:.4g} (worse by {worse_by:+.4g})",
                         value=worse_by, threshold=bound, direction="at_most", metric=metric,
                         scale=bound if bound > 0 else abs(before), narrow_because=narrow_because)

    def at_most(self, text: str, value: float, limit: float, *, expected_here: bool = True,
                reason: str = "", narrow_because: str = "") -> bool:
        return self._add(text, value <= limit, f"{value:.4g} (limit {limit:.4g})", expected_here, reason,
                         value=value, threshold=limit, direction="at_most", narrow_because=narrow_because)

    def at_least(self, text: str, value: float, floor: float, *, expected_here: bool = True,
                 reason: str = "", narrow_because: str = "") -> bool:
        return self._add(text, value >= floor, f"{value:.4g} (floor {floor:.4g})", expected_here, reason,
                         value=value, threshold=floor, narrow_because=narrow_because)

    def true(self, text: str, condition: bool, measured: str = "") -> bool:
        return self._add(text, bool(condition), measured or str(bool(condition)))

    def write(self) -> None:
        """Append the claims not yet written to the session's ledger (one line each)."""
        if self.session is None:
            return
        from . import ledger

        for claim in self.claims[self._written:]:
            ledger.append(ledger.make_claim_record(self.notebook, claim.as_dict(), profile=self.session.profile.name,
                                                   run_id=self.session.run_id))
        self._written = len(self.claims)

    def verify(self) -> None:
        self.write()  # before raising: a claim that failed is the one most worth having on record
        failed = [c for c in self.claims if c.status == "FAILED"]
        if failed:
            raise ClaimFailed(f"{self.notebook}: {len(failed)} claim(s) did not hold:\n" + "\n".join(
                f"  - {c.text}: measured {c.measured}" for c in failed))
        held = sum(c.status == "held" for c in self.claims)
        print(f"{self.notebook}: {held} claim(s) held, "
              f"{len(self.claims) - held} reported as not expected on this hardware")
