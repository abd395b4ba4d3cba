"""Course tooling: the manifest of lessons (re-exported here, so `costlab.course.lesson(...)`
reads as before), the runner behind `make course`, the report and the workshop merge."""
from .manifest import LESSONS, Lesson, NOTEBOOK_DIR, TRACKS, available, lesson, markdown_table, readme_with_table, track

__all__ = ['LESSONS', 'Lesson', 'NOTEBOOK_DIR', 'TRACKS', 'available', 'lesson', 'markdown_table', 'readme_with_table', 'track']
