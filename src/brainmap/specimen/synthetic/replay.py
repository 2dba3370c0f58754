"""The true signal of virtual-microscope images, pixel by pixel, to measure detection against.

The renderer itself returns the true signal of each image it makes
(:func:`~brainmap.specimen.synthetic.render.render_section_truth`, from the very draws that made the image):

* connectivity: a pixel is signal where the fibre field ``U > 1 - d`` (the generator's definition of an
  axon pixel) or inside the injection site (injection fraction >= 0.5); the scattered glow around the site is
  not signal;
* ISH: a pixel is signal where its centre lies inside an expressing cell's disc (diameter = the gene's cell
  diameter; the discs cover the expected fraction ``d`` of the area, the truth density's definition).

Both are limited to tissue that is left (not torn away). :func:`render_with_truth` is that, as ``(images,
mask)``.

:class:`VirtualSpecimen` builds a specimen in memory (plan, truth volumes, render sources and a
:class:`~brainmap.specimen.SectionDataSet` with the TRUE transforms) so tests and benchmarks can render any
section -- or a crop of one, at any pixel size -- without writing a folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from brainmap.specimen.model import SectionDataSet, SectionImage
from brainmap.specimen.transforms import Affine2d, Alignment2d, Alignment3d

__all__ = ["VirtualSpecimen", "precision_recall", "render_with_truth"]


def render_with_truth(plan: Any, section: Any, sources: Any, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(images, truth)``: the generator's images of one section (``{"tissue", "signal"}`` uint16) and the
    bool mask of its true signal pixels (module docstring)."""
    from brainmap.specimen.synthetic.render import render_section_truth

    rendered = render_section_truth(plan, section, sources, seed)
    return rendered.images, rendered.signal


def precision_recall(detected: np.ndarray, truth: np.ndarray, where: np.ndarray | None = None) -> tuple[float, float]:
    """Pixel precision ``TP / (TP + FP)`` and recall ``TP / (TP + FN)`` of a detection (bool images), over the
    pixels ``where`` (default all). NaN when undefined."""
    detected = np.asarray(detected, dtype=bool)
    truth = np.asarray(truth, dtype=bool)
    if where is not None:
        detected, truth = detected[where], truth[where]
    tp = float(np.count_nonzero(detected & truth))
    fp = float(np.count_nonzero(detected & ~truth))
    fn = float(np.count_nonzero(~detected & truth))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    return precision, recall


@lru_cache(maxsize=4)
def _sources(product: str, experiment_id: int | None, gene: str | None, seed: int, resolution_um: int):
    """``(space, truth volumes, render sources)`` of a virtual specimen (the slow part: ~3-5 s at 100 um)."""
    from brainmap.atlas import ReferenceSpace
    from brainmap.specimen.synthetic.render import RenderSources, tissue_volume
    from brainmap.specimen.synthetic.signal import truth_density
    from brainmap.specimen.synthetic.template import make_template

    space = ReferenceSpace.bundled(resolution_um)
    truth = truth_density(product, experiment_id=experiment_id, gene=gene, seed=seed, space=space)
    sources = RenderSources(
        resolution_um=truth.resolution_um, tissue=tissue_volume(make_template(space, seed), space),
        signal_density=truth.signal_density, injection_fraction=truth.injection_fraction,
        expression_intensity=truth.expression_intensity,
        cell_diameter_um=truth.expression.cell_diameter_um if truth.expression is not None else 12.0)
    return space, truth, sources


@dataclass
class VirtualSpecimen:
    """A virtual-microscope specimen held in memory (nothing written), with its TRUE transforms.

    Build with :meth:`make`. Attributes: ``plan`` (the generator's SpecimenPlan), ``sources`` (RenderSources),
    ``truth`` (TruthVolumes), ``space`` (the ReferenceSpace of the truth), ``seed`` and ``dataset`` (a
    SectionDataSet of every planned section with the true Alignment2d and Alignment3d).
    """

    plan: Any
    sources: Any
    truth: Any
    space: Any
    seed: int
    dataset: SectionDataSet
    sections: dict[int, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, product: str, *, experiment_id: int | None = None, gene: str | None = None,
             plane: str | None = None, pixel_size_um: float | None = None, seed: int = 0,
             truth_resolution_um: int = 100, damage: bool = True) -> VirtualSpecimen:
        """Plan a specimen as :func:`~brainmap.specimen.synthetic.make.make_specimen` does (same generator
        functions and defaults), without rendering or writing anything. The truth volumes and render sources
        are cached per ``(product, experiment_id, gene, seed, truth_resolution_um)`` (do not modify them)."""
        from brainmap.specimen.synthetic.geometry import DamageRates, plan_specimen
        from brainmap.specimen.synthetic.make import DEFAULT_PIXEL_SIZE_UM

        plane = plane or "coronal"
        pixel = float(pixel_size_um or DEFAULT_PIXEL_SIZE_UM[product])
        space, truth, sources = _sources(product, experiment_id, gene, int(seed), int(truth_resolution_um))
        rng = np.random.default_rng([int(seed), 0xB4A1])
        plan = plan_specimen(space, product, plane, pixel, rng, dataset_id=1,
                             damage=DamageRates() if damage else None)
        metadata: dict[str, Any] = {"synthetic": True, "seed": int(seed)}
        if truth.expression is not None:
            metadata["cell_diameter_um"] = truth.expression.cell_diameter_um
            metadata["gene"] = gene
        if truth.projection is not None:
            metadata["experiment_id"] = experiment_id
            metadata["injection_coordinates_um"] = [float(v) for v in truth.projection.injection_center_um]
        images = [SectionImage(id=s.image_id, section_number=s.section_number, channels=["tissue", "signal"],
                               width=plan.width, height=plan.height, failed=s.failed, alignment2d=s.alignment2d)
                  for s in plan.sections]
        dataset = SectionDataSet(id=1, plane=plan.plane, product=plan.product,
                                 section_thickness_um=plan.section_thickness_um, sampling_um=plan.sampling_um,
                                 pixel_size_um=plan.pixel_size_um, images=images,
                                 alignment3d=Alignment3d.from_tvr(plan.tvr), metadata=metadata)
        return cls(plan=plan, sources=sources, truth=truth, space=space, seed=int(seed), dataset=dataset,
                   sections={s.image_id: s for s in plan.sections})

    def render(self, image: SectionImage | int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """``(images, truth mask)`` of one section of :attr:`dataset` (an image or its id)."""
        image_id = image.id if isinstance(image, SectionImage) else int(image)
        return render_with_truth(self.plan, self.sections[image_id], self.sources, self.seed)

    def crop(self, image: SectionImage | int, centre_um: tuple[float, float] | None = None,
             size_px: tuple[int, int] = (512, 512), pixel_size_um: float | None = None, *,
             centre_reference_um: tuple[float, float, float] | None = None
             ) -> tuple[dict[str, np.ndarray], np.ndarray, SectionImage]:
        """Render a ``size_px = (rows, cols)`` window of a section at ``pixel_size_um`` (default the
        specimen's), centred on the specimen in-plane point ``centre_um = (sx, sy)``, or on the in-plane
        position of the reference point ``centre_reference_um`` (AP, DV, LR), or on the section's centre.
        Returns ``(images, truth mask, the window's SectionImage with its true Alignment2d)``; the window is a
        section of its own (same id and section number, no damage)."""
        image_id = image.id if isinstance(image, SectionImage) else int(image)
        section = self.sections[image_id]
        pixel = float(pixel_size_um or self.plan.pixel_size_um)
        rows, cols = int(size_px[0]), int(size_px[1])
        tsv = section.alignment2d.tsv
        rotation = tsv.matrix / np.sqrt(abs(np.linalg.det(tsv.matrix)))
        if centre_reference_um is not None:
            centre_um = tuple(self.dataset.alignment3d.trv.apply(np.asarray(centre_reference_um, float))[:2])
        if centre_um is None:
            centre_um = tuple(tsv.apply(np.array([self.plan.width / 2.0, self.plan.height / 2.0])))
        matrix = pixel * rotation
        translation = np.asarray(centre_um, dtype=np.float64) - matrix @ np.array([cols / 2.0, rows / 2.0])
        alignment = Alignment2d.from_tsv(Affine2d(matrix, translation))
        plan = replace(self.plan, pixel_size_um=pixel, width=cols, height=rows)
        window = replace(section, alignment2d=alignment, damage=[])
        images, truth = render_with_truth(plan, window, self.sources, self.seed)
        own = SectionImage(id=section.image_id, section_number=section.section_number,
                           channels=["tissue", "signal"], width=cols, height=rows, alignment2d=alignment)
        return images, truth, own
