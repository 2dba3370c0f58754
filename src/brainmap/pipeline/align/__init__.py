"""The alignment module: section images -> specimen volume -> reference space.

* :func:`align_dataset` -- align a data set folder and write every section's Alignment2d and the data set's
  Alignment3d into its ``dataset.json``; :func:`align_sections` does the work without writing and returns an
  :class:`AlignResult` with diagnostics; :func:`run_align_cli` is ``brainmap align DIR``;
  :func:`sections_without_tissue` names the empty sections of a data set aligned elsewhere.
* :mod:`.reconstruct` -- the section stack and the specimen volume; :mod:`.register` -- the SimpleITK
  registrations; :mod:`.accuracy` -- the error of estimated transforms against known true ones.
"""

from brainmap.pipeline.align.accuracy import AlignmentErrorStats, alignment_error
from brainmap.pipeline.align.align import (
    AlignResult,
    AlignSettings,
    align_dataset,
    align_sections,
    reference_template,
    run_align_cli,
    sections_without_tissue,
)
from brainmap.pipeline.align.reconstruct import AlignmentError

__all__ = [
    "AlignResult",
    "AlignSettings",
    "AlignmentError",
    "AlignmentErrorStats",
    "align_dataset",
    "align_sections",
    "alignment_error",
    "reference_template",
    "run_align_cli",
    "sections_without_tissue",
]
