"""costlab: measure what each model-level cut saves on your own hardware.

Modules, one concern each: profiles, hardware, models, reviews (the generated data set), data,
train, evaluation, meter, isolate, workloads, estimate, compare, ledger, expect, course,
session, runner. Importing costlab has no side effects.
"""
from .expect import Checks, ClaimFailed
from .session import Session, start

__all__ = ["Checks", "ClaimFailed", "Session", "start"]
