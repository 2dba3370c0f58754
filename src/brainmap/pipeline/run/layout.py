"""Where a data set's pipeline artefacts live: one object, its paths resolved once."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PipelineFolder"]


@dataclass(frozen=True)
class PipelineFolder:
    """The ``pipeline/`` folder beside a data set's images, and the path of every artefact in it.

    Every path is absolute (the data set folder is resolved once, when the object is made), so a relative
    folder given on the command line and the folder of a Dask worker mean the same files.

    Parameters
    ----------
    dataset : Path
        The data set folder (``dataset.json`` + ``images/``), absolute.

    Examples
    --------
    >>> folder = PipelineFolder.of("spec/conn")
    >>> folder.unionize.relative_to(folder.dataset).as_posix()
    'pipeline/structure_unionizes.csv'
    """

    dataset: Path

    #: Folder names and file names, as Allen-style tools and the loader expect them.
    WORK = "pipeline"
    GRIDS = "grids"
    ALIGNMENT = "alignment.json"
    UNIONIZE = "structure_unionizes.csv"

    @classmethod
    def of(cls, dataset_folder: str | os.PathLike[str]) -> "PipelineFolder":
        """The pipeline folder of ``dataset_folder`` (relative to the current directory, or absolute)."""
        return cls(Path(dataset_folder).expanduser().resolve())

    @property
    def work(self) -> Path:
        """``<dataset>/pipeline``."""
        return self.dataset / self.WORK

    @property
    def grids(self) -> Path:
        """``<dataset>/pipeline/grids``: the gridded volumes."""
        return self.work / self.GRIDS

    @property
    def alignment(self) -> Path:
        """``<dataset>/pipeline/alignment.json``: the recorded Alignment2d / Alignment3d."""
        return self.work / self.ALIGNMENT

    @property
    def unionize(self) -> Path:
        """``<dataset>/pipeline/structure_unionizes.csv``: Allen's (Projection)StructureUnionize rows."""
        return self.work / self.UNIONIZE

    def grid_file(self, name: str) -> Path:
        """A file of the grids folder, e.g. ``projection_density_100.nrrd``."""
        return self.grids / name

    def make(self) -> "PipelineFolder":
        """Create ``pipeline/`` if it is missing; returns self."""
        self.work.mkdir(exist_ok=True)
        return self
