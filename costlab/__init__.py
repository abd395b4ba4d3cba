"""costlab: measure what each model-level cut saves on your own hardware.

Three roles, one folder each:
- `costlab.*`: the measuring kit a notebook imports: profiles, hardware, models, reviews (the
  generated data set), data, train, evaluation, meter, isolate (fresh-process runs), workloads,
  estimate, compare, ledger, claims, expect, session, distributed (torchrun jobs).
- `costlab.lessons.*`: per-lesson helpers that are not the cut (analyses, plots, data splits,
  the distributed lessons' rank code). The technique itself runs in the notebook's cells.
- `costlab.course.*`: course tooling: the manifest, the runner behind `make course`, the report,
  the workshop merge, doctor.
Importing costlab has no side effects.
"""
from .expect import Checks, ClaimFailed
from .session import Session, start

__all__ = ["Checks", "ClaimFailed", "Session", "start"]
