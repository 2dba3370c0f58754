"""Where a virtual specimen's sections truly hold tissue: the generator's own presence of tissue, from its truth.

The renderer paints tissue where a pixel's TRUE reference point (true Alignment2d, Alignment3d and warp) falls in
the brain outside the ventricles (:func:`~.render.tissue_volume`) and the section's damage leaves it
(:func:`~.render.damage_masks`). :func:`true_tissue_masks` gives that presence per image on a grid of blocks, so
an alignment error can be measured over the tissue that is really there rather than over what a tissue detector
took for tissue (e.g. a bias field on a section that cuts no brain).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from brainmap.atlas import ReferenceSpace
from brainmap.specimen.folder import read_dataset

__all__ = ["true_tissue_masks"]


def true_tissue_masks(folder: str | os.PathLike[str], block_um: float = 50.0) -> dict[int, np.ndarray]:
    """The true tissue of every image of a synthetic specimen folder, on blocks of ~``block_um``.

    Args:
        folder: a folder made by :func:`~.make.make_specimen` (with ``truth/``).
        block_um: block size, microns: ``factor = max(1, round(block_um / pixel_size_um))`` pixels a side; block
            ``[R, C]`` covers pixels ``[R f, (R + 1) f) x [C f, (C + 1) f)`` (incomplete blocks at the high end
            dropped, as :func:`brainmap.pipeline.align.register.block_mean`).

    Returns:
        image id -> bool ``(height // f, width // f)``: the block's centre lies in tissue (brain outside the
        ventricles, where the true transforms put it) and at least half of the block's tissue is left by the
        section's damage.
    """
    from brainmap.specimen.synthetic.make import read_truth
    from brainmap.specimen.synthetic.render import damage_masks, tissue_volume

    folder = Path(folder)
    dataset = read_dataset(folder, check_files=False)
    truth = read_truth(folder)
    space = ReferenceSpace.bundled(int(round(truth.resolution_um)))
    present = tissue_volume(np.ones(space.shape, dtype=np.float32), space) > 0
    damage = {int(i["id"]): i.get("damage", []) for i in truth.info["images"]}
    factor = max(1, int(round(block_um / dataset.pixel_size_um)))
    masks = {}
    for image in dataset.images:
        if image.id not in truth.alignment2d:
            continue
        rows, cols = image.height // factor, image.width // factor
        yy, xx = np.mgrid[0:rows, 0:cols]
        xy = (np.stack([xx.ravel(), yy.ravel()], axis=1) + 0.5) * factor
        sxy = truth.alignment2d[image.id].tsv.apply(xy)
        sz = np.full((xy.shape[0], 1), dataset.section_position_um(image.section_number))
        reference = truth.alignment3d.tvr.apply(np.concatenate([sxy, sz], axis=1))
        if truth.deformation is not None:
            reference = truth.deformation.apply(reference)
        index = np.floor(reference / truth.resolution_um).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.array(present.shape)), axis=1)
        tissue = np.zeros(xy.shape[0], dtype=bool)
        tissue[inside] = present[index[inside, 0], index[inside, 1], index[inside, 2]]
        keep, _ = damage_masks((image.height, image.width), damage.get(image.id, []))
        kept = keep[:rows * factor, :cols * factor].reshape(rows, factor, cols, factor).mean(axis=(1, 3))
        masks[image.id] = tissue.reshape(rows, cols) & (kept >= 0.5)
    return masks
