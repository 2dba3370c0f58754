"""Appearance models of the virtual microscope's tissue channel, and its smooth non-linear warp.

The aligner registers sections to the annotation-derived Nissl-like template (:mod:`brainmap.atlas.template`).
Specimens drawn from that same template (the ``"nissl"`` appearance, the default and today's images) measure
an image registered to a near copy of itself. The other appearances share nothing with the template but the
annotation's geometry: no template value, jitter, texture field, layer rule or blur is reused.

* **Per-tissue-class contrasts**: every structure of grey matter, fibre tracts and the choroid plexus gets a
  stain amount drawn from ``numpy.random.default_rng([seed, 0xA99E, appearance])``: a class mean (grey matter
  0.35..0.8), the fibre tracts a random ratio of it (``"fluorescence"``: 1.3..2.2, brighter, as white matter
  autofluoresces; brightfield: 0.25..0.7 or 1.3..1.8, so the order of grey and white is random), a per-structure
  spread of +-30 %, and one structure in ten a factor 0.5..1.8 (a stain that picks out some nuclei). Ventricles
  and the outside hold no tissue.
* **Texture**: two smooth 3-D random fields (correlation ~150 um and ~700 um, amplitudes 0.08 and 0.15),
  multiplicative, on a 100 um grid.
* **At render time** (:func:`form_image`): a blur of 10..40 um, a smooth bias field (+-10 % over ~3 mm plus a
  linear ramp of up to +-15 % across the image), structured noise (line stripes and a 1/f-like field), and the image formation:

  - ``"fluorescence"``: tissue bright on a dark slide (counts = offset + gain x stain);
  - ``"brightfield"``: tissue dark on a bright slide (Beer-Lambert: white x exp(-k x stain), one channel);
  - ``"rgb"``: brightfield colour, two stains (a random DAB-like brown from the stain amount, a random
    haematoxylin-like counterstain proportional to the tissue), three channels ``red``, ``green``, ``blue``.

:func:`random_warp` draws the smooth non-linear deformation (100-300 um at its largest) applied on top of the
specimen's affine: a :class:`~brainmap.specimen.deformation.DeformationField`.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from brainmap.atlas import ReferenceSpace
from brainmap.atlas.template import upsample_linear
from brainmap.specimen.deformation import DeformationField

__all__ = ["APPEARANCES", "appearance_channels", "appearance_volume", "form_image", "random_warp"]

#: The appearance models: ``"nissl"`` (today's, from the aligner's template) and three that share nothing with it.
APPEARANCES = ("nissl", "fluorescence", "brightfield", "rgb")

FIBER_TRACTS, VENTRICULAR_SYSTEMS, CHOROID_PLEXUS = 1009, 73, 108
TEXTURE_GRID_UM = 100.0


def appearance_channels(appearance: str) -> tuple[str, ...]:
    """The tissue channels an appearance writes (before the ``signal`` channel)."""
    check_appearance(appearance)
    return ("red", "green", "blue") if appearance == "rgb" else ("tissue",)


def check_appearance(appearance: str) -> None:
    if appearance not in APPEARANCES:
        raise ValueError(f"appearance must be one of {APPEARANCES}, got {appearance!r}")


def _subtree(order, structure_id: int) -> slice:
    k = order.position.get(int(structure_id))
    if k is None:
        return slice(0, 0)
    return slice(k, k + int(order.subtree_size[k]))


def structure_stain(space: ReferenceSpace, seed: int, appearance: str) -> np.ndarray:
    """Stain amount per structure (ontology preorder) of a non-Nissl appearance (see the module docstring)."""
    rng = np.random.default_rng([int(seed), 0xA99E, APPEARANCES.index(appearance)])
    order = space.ontology_order
    n = len(order.ids)
    grey = rng.uniform(0.35, 0.8)
    if appearance == "fluorescence":
        ratio = rng.uniform(1.3, 2.2)
    else:
        ratio = rng.uniform(0.25, 0.7) if rng.random() < 0.5 else rng.uniform(1.3, 1.8)
    values = grey * (1.0 + rng.uniform(-0.3, 0.3, n))
    marked = rng.random(n) < 0.1
    values[marked] *= rng.uniform(0.5, 1.8, int(marked.sum()))
    fibres = _subtree(order, FIBER_TRACTS)
    values[fibres] = grey * ratio * (1.0 + rng.uniform(-0.15, 0.15, fibres.stop - fibres.start))
    values[_subtree(order, VENTRICULAR_SYSTEMS)] = 0.0
    values[_subtree(order, CHOROID_PLEXUS)] = rng.uniform(0.2, 0.6)
    return np.clip(values, 0.0, 1.5)


def _smooth_random_field(rng: np.random.Generator, shape: tuple[int, ...], sigma_cells: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_cells, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def appearance_volume(space: ReferenceSpace, seed: int, appearance: str) -> np.ndarray:
    """The stain amount of a non-Nissl appearance: float32 ``(AP, DV, LR)`` at the space's resolution, 0 outside
    the brain and in the ventricles (the annotation's memory order)."""
    check_appearance(appearance)
    if appearance == "nissl":
        raise ValueError("the 'nissl' appearance is the template's: use render.tissue_volume(make_template(...))")
    values = structure_stain(space, seed, appearance).astype(np.float32)
    volume = space.label_index.lookup(values, fill=np.float32(0.0))
    rng = np.random.default_rng([int(seed), 0x7E87, APPEARANCES.index(appearance)])
    grid = tuple(int(np.ceil(e / TEXTURE_GRID_UM)) + 1 for e in space.extent_um)
    texture = (1.0 + 0.08 * _smooth_random_field(rng, grid, 150.0 / TEXTURE_GRID_UM)
               + 0.15 * _smooth_random_field(rng, grid, 700.0 / TEXTURE_GRID_UM)).astype(np.float32)
    fortran = bool(volume.flags.f_contiguous and not volume.flags.c_contiguous)
    volume *= np.clip(upsample_linear(texture, TEXTURE_GRID_UM, space.shape, space.resolution, fortran), 0.3, 2.0)
    return volume


def random_warp(space: ReferenceSpace, seed: int, max_displacement_um: tuple[float, float] = (100.0, 300.0),
                spacing_um: float = 200.0, smoothness_um: float = 800.0) -> DeformationField:
    """A smooth random deformation of the reference space whose largest displacement over the brain is drawn in
    ``max_displacement_um`` (microns): three Gaussian-filtered noise fields (sigma ``smoothness_um``) on a
    ``spacing_um`` grid covering the volume with a 1 mm margin. Its Jacobian stays near 1 (the largest strain is
    about largest displacement / smoothness), so it is invertible."""
    rng = np.random.default_rng([int(seed), 0xDEF0])
    origin = np.full(3, -1000.0)
    shape = tuple(int(np.ceil((e + 2000.0) / spacing_um)) + 1 for e in space.extent_um)
    fields = np.stack([_smooth_random_field(rng, shape, smoothness_um / spacing_um) for _ in range(3)])
    # the largest displacement over the brain's extent, not the margin's
    inner = tuple(slice(int(1000.0 / spacing_um), int((1000.0 + e) / spacing_um) + 1) for e in space.extent_um)
    magnitude = np.sqrt((fields ** 2).sum(axis=0))[inner].max()
    target = rng.uniform(*max_displacement_um)
    return DeformationField((fields * (target / magnitude)).astype(np.float32), origin, spacing_um)


# -- image formation ----------------------------------------------------------------------------------------------
def _smooth2d(rng: np.random.Generator, shape: tuple[int, int], pixel_um: float, scale_um: float) -> np.ndarray:
    step = max(scale_um / pixel_um, 1.0)
    coarse_shape = (int(np.ceil(shape[0] / step)) + 3, int(np.ceil(shape[1] / step)) + 3)
    coarse = _smooth_random_field(rng, coarse_shape, 1.0)
    zoom = ndimage.zoom(coarse, step, order=1)
    return zoom[: shape[0], : shape[1]].astype(np.float32)


def _structured_noise(rng: np.random.Generator, shape: tuple[int, int], pixel_um: float) -> np.ndarray:
    """Zero-mean noise with structure: a 1/f-like sum of smooth fields at 30, 100 and 300 um, and line stripes
    (a per-row offset, as a line-scanning camera or tile stitching leaves)."""
    noise = sum(a * _smooth2d(rng, shape, pixel_um, s) for a, s in ((0.06, 30.0), (0.05, 100.0), (0.04, 300.0)))
    stripes = ndimage.gaussian_filter1d(rng.standard_normal(shape[0]), 1.5).astype(np.float32) * 0.05
    return (noise + stripes[:, None]).astype(np.float32)


def form_image(rng: np.random.Generator, stain: np.ndarray, counterstain: np.ndarray, appearance: str,
               pixel_um: float, max_count: int) -> list[np.ndarray]:
    """The tissue channel(s) of one section from its stain amount and tissue presence (``counterstain``: 0..1,
    damage applied), as uint16 counts within ``max_count``: one image (``"fluorescence"``, ``"brightfield"``) or
    three (``"rgb"``: red, green, blue)."""
    shape = stain.shape
    blur = rng.uniform(10.0, 40.0) / pixel_um
    stain = ndimage.gaussian_filter(stain, blur) if blur > 0.3 else stain
    stain = np.maximum(stain * (1.0 + _structured_noise(rng, shape, pixel_um)), 0.0)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    ramp = rng.uniform(-0.15, 0.15, 2) / np.array(shape, dtype=np.float32)
    bias = (1.0 + 0.1 * _smooth2d(rng, shape, pixel_um, 3000.0) + ramp[0] * (rows - shape[0] / 2)
            + ramp[1] * (cols - shape[1] / 2))
    bias = np.clip(bias, 0.6, 1.4).astype(np.float32)
    read = 0.01 * max_count
    if appearance == "fluorescence":
        expected = max_count * (0.03 + 0.5 * stain * bias)
        images = [expected]
    elif appearance == "brightfield":
        k = rng.uniform(0.8, 1.6)
        images = [max_count * 0.65 * bias * np.exp(-k * stain)]
    elif appearance == "rgb":
        dab = np.array([0.27, 0.57, 0.78]) * rng.uniform(0.8, 1.2, 3)
        haem = np.array([0.65, 0.70, 0.29]) * rng.uniform(0.8, 1.2, 3)
        amount = rng.uniform(0.2, 0.6)
        white = rng.uniform(0.6, 0.7, 3)
        images = [max_count * white[c] * bias * np.exp(-(2.0 * dab[c] * stain + amount * haem[c] * counterstain))
                  for c in range(3)]
    else:
        raise ValueError(f"form_image draws the non-Nissl appearances, not {appearance!r}")
    out = []
    for image in images:
        noisy = image + rng.standard_normal(shape, dtype=np.float32) * np.float32(read)
        out.append(np.clip(np.rint(noisy), 0, max_count).astype(np.uint16))
    return out
