"""The closed loop of the connectivity pipeline: recovered normalized projection volumes against the real table.

A virtual specimen of a real experiment (Knox 2019 injection, Oh 2014 normalized projection volumes) goes
through the pipeline; :func:`compare_with_real_npv` sets the unionizer's projection rows beside the real Oh 2014
values over the table's own structures -- the 295 summary structures of its CCF v2 ontology, each hemisphere --
that the CCF 2017 annotation draws (a few, e.g. SUBd / SUBv, have no voxel there: no pipeline on this atlas
can recover them) and that have **signal**: a real NPV implying at least ``floor_pixels`` signal pixels in the
specimen's images,

    NPV * injection volume / (pixel area * section thickness) >= floor_pixels,

i.e. above the detection floor of the images' pixels (default 10 pixels: the Poisson error of such a count is
about 30 %). The Spearman correlation over those is one closed-loop figure; Spearman is blind to scale, so
:meth:`ClosedLoop.median_abs_log10_ratio` gives the scale-sensitive one: the median ``|log10(recovered / true)|``
over the structure-hemispheres with NPV > 1e-3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from brainmap.atlas import ReferenceSpace
from brainmap.data import tables

__all__ = ["ClosedLoop", "compare_with_real_npv", "real_projection_volumes"]

#: Default detection floor: signal pixels a structure's real NPV must imply to count as "with signal".
SIGNAL_FLOOR_PIXELS = 10.0


def real_projection_volumes(experiment_id: int, space: ReferenceSpace) -> pd.DataFrame:
    """The Oh 2014 normalized projection volumes of an experiment matched to ``space``'s ontology (acronyms,
    whitespace stripped): ``structure_acronym, structure_id, hemisphere_id, normalized_projection_volume``,
    without missing values (-1) and without structure-hemispheres the annotation has no voxel of."""
    real = tables.projection_volumes_of(experiment_id)
    id_of = space.structure_tree.get_id_acronym_map()
    real["structure_id"] = [int(id_of.get(str(a).strip(), -1)) for a in real["structure_acronym"]]
    counts = {h: space.total_voxel_counts(h) for h in (1, 2)}
    drawn = np.array([s >= 0 and counts[int(h)].get(s, 0) > 0
                      for s, h in zip(real["structure_id"], real["hemisphere_id"])], dtype=bool)
    keep = drawn & (real["normalized_projection_volume"].to_numpy() >= 0)
    return real.loc[keep, ["structure_acronym", "structure_id", "hemisphere_id",
                           "normalized_projection_volume"]].reset_index(drop=True)


@dataclass
class ClosedLoop:
    """Recovered against real NPVs (:func:`compare_with_real_npv`).

    Attributes:
        spearman: Spearman correlation over the structure-hemispheres with signal.
        n_signal: how many have signal; ``n``: how many were compared in all.
        floor_npv: the NPV of ``floor_pixels`` signal pixels.
        table: per structure-hemisphere ``normalized_projection_volume`` (real), ``recovered`` (0 where the
            unionizer has no row) and ``signal`` (bool).
    """

    spearman: float
    n_signal: int
    n: int
    floor_npv: float
    table: pd.DataFrame

    #: The factor the specimen's NPVs were drawn at (its ``density_scale``): the truth is real NPV x this.
    true_scale: float = 1.0

    def median_abs_log10_ratio(self, min_npv: float = 1e-3) -> tuple[float, int]:
        """Scale-sensitive error: the median of ``|log10(recovered / true NPV)|`` over the structure-hemispheres
        with a real NPV > ``min_npv`` (true NPV = real x :attr:`true_scale`; a structure recovered as 0 counts
        as an infinite error), and their count. 0.15 is a factor of 1.4."""
        keep = self.table["normalized_projection_volume"] > min_npv
        true = self.table.loc[keep, "normalized_projection_volume"].to_numpy() * self.true_scale
        recovered = self.table.loc[keep, "recovered"].to_numpy()
        with np.errstate(divide="ignore"):
            error = np.abs(np.log10(np.where(recovered > 0, recovered, 0.0) / true))
        return (float(np.median(error)) if error.size else float("nan")), int(keep.sum())

    def spearman_above(self, floor_npv: float) -> tuple[float, int]:
        """Spearman and count over the structure-hemispheres with a real NPV >= ``floor_npv``."""
        keep = self.table["normalized_projection_volume"] >= floor_npv
        rho = spearmanr(self.table.loc[keep, "normalized_projection_volume"], self.table.loc[keep, "recovered"])
        return float(rho.correlation), int(keep.sum())


def compare_with_real_npv(unionizes: pd.DataFrame, experiment_id: int, space: ReferenceSpace, *,
                          pixel_size_um: float, section_thickness_um: float,
                          floor_pixels: float = SIGNAL_FLOOR_PIXELS, true_scale: float = 1.0) -> ClosedLoop:
    """Set the projection rows (``is_injection`` false) of a ProjectionStructureUnionize table beside the real
    Oh 2014 NPVs of ``experiment_id`` (module docstring); ``pixel_size_um`` and ``section_thickness_um`` are the
    specimen's (they set the detection floor); ``true_scale`` is the specimen's ``density_scale`` (its NPVs are
    the real ones times it), used by :meth:`ClosedLoop.median_abs_log10_ratio`."""
    if not (pixel_size_um > 0 and section_thickness_um > 0 and floor_pixels >= 0):
        raise ValueError("pixel_size_um and section_thickness_um must be positive and floor_pixels >= 0")
    for column in ("structure_id", "hemisphere_id", "is_injection", "normalized_projection_volume"):
        if column not in unionizes:
            raise ValueError(f"the unionize table has no column {column!r}")
    real = real_projection_volumes(experiment_id, space)
    projection = unionizes[~unionizes["is_injection"].astype(bool)]
    recovered = projection[["structure_id", "hemisphere_id", "normalized_projection_volume"]].rename(
        columns={"normalized_projection_volume": "recovered"})
    merged = real.merge(recovered, on=["structure_id", "hemisphere_id"], how="left").fillna({"recovered": 0.0})
    injection_mm3 = float(tables.connectivity_experiment(experiment_id)["injection_volume"])
    floor_npv = floor_pixels * pixel_size_um ** 2 * section_thickness_um * 1e-9 / injection_mm3
    merged["signal"] = merged["normalized_projection_volume"] >= floor_npv
    signal = merged["signal"]
    rho = spearmanr(merged.loc[signal, "normalized_projection_volume"], merged.loc[signal, "recovered"]).correlation
    return ClosedLoop(spearman=float(rho), n_signal=int(signal.sum()), n=int(len(merged)), floor_npv=floor_npv,
                      table=merged, true_scale=float(true_scale))
