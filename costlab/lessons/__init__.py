"""Per-lesson helpers that are not the cut: analyses, plots, data splits and the worker code
of the distributed lessons. The technique itself runs in the notebook's cells."""
