"""Structured connectivity grids for the AllenSDK unionize oracle (numpy only: it runs in both virtual environments).

``crop(annotation, case)`` gives a case's annotation (an AP slab for the 25 um case) and ``make_grids`` the ten grid
volumes AllenSDK's ``TissuecyteUnionizer`` reads, built on the real CCF 2017 annotation by a deterministic recipe:

* an injection: a core (``injection_fraction`` 1) made of a sphere plus every voxel of one small right-hemisphere
  structure (so that structure's projection record is exactly empty), and a shell with fractional values;
* a projection pattern: decay from the injection, a contralateral hotspot and a textured background;
* an AAV exclusion blob that overlaps the injection shell, and one whole left-hemisphere structure excluded;
* missing sections (``data_mask`` 0, with large values there that must be ignored), a half-missing section and a
  section imaged with no pixels (``sum_pixels`` 0 where the densities are positive);
* silent structures: projection signal only in the section without pixels;
* planted ties: voxels holding exactly the same largest values in many structures and in both hemispheres, so
  the ancestors' and the bilateral records' tie rules decide the max voxels; among them structures annotated
  directly whose descendants are too, so a structure's own record ties with a descendant's.

Every pseudo-random number comes from integer hashing of voxel indices (no RNG stream, so no numpy version changes
it); the smooth functions (exp, tanh) may differ in the last bit between platforms, far below rtol 1e-9. Inside the injection core the projection and injection volumes are equal
voxel for voxel and the exclusion blob stays out of it, so AllenSDK's subtraction of the injection record from a
structure inside the core sums identical arrays and gives exactly 0 (as brainmap's must); ``sum_pixels`` is
integral. Values are bounded smoothly (no clip), so a structure's largest value is held by one voxel unless planted.
Where AllenSDK's result depends on the unstable order of ``np.argsort`` (a record with projection pixels but no positive density, or a max voxel at sorted position 0),
the recipe stays away; ``make_oracle.py`` checks that it did.
"""

from __future__ import annotations

import numpy as np

#: Structures named by the recipe (CCF 2017 ids): the fully injected one and the excluded one.
INJECTED_STRUCTURE = 362  # MD, right hemisphere
EXCLUDED_STRUCTURE = 262  # RT, left hemisphere
#: Sibling sets planted with the same largest value (VISp and MOp layers), both hemispheres.
TIED_SIBLINGS = [593, 721, 778, 320, 943, 648, 844]
#: Two structures annotated directly whose only directly annotated descendant is planted with the same largest
#: value (the 100 um case): sV with 794 and PB with 123. AllenSDK visits a structure's own record before its
#: descendants', so the descendant's voxel wins the tie; in signed-label order the structure's own record would
#: come last, on the left for sV (its id below the descendant's) and on the right for PB (above it).
OWN_RECORD_TIES = [229, 794, 867, 123]
TOP, SECOND = 0.9375, 0.875  # planted projection maxima (all other valid densities stay below 0.85)
INJECTION_TOP = 0.8125  # planted injection-density maximum (other core values <= 0.75)

#: name -> (resolution um, AP crop as (start, stop) or None)
CASES = {"100um": (100, None), "25um": (25, (256, 288))}

GRID_NAMES = [
    "data_mask", "sum_pixels", "injection_fraction", "injection_density", "injection_energy",
    "injection_sum_pixel_intensities", "projection_density", "projection_energy", "sum_pixel_intensities",
    "aav_exclusion_fraction",
]


def _hash01(shape: tuple[int, int, int], salt: int) -> np.ndarray:
    """Uniform values in [0, 1) from the voxel indices (splitmix64 of a linear index; exact integer arithmetic)."""
    n = np.arange(int(np.prod(shape)), dtype=np.uint64).reshape(shape)
    h = n * np.uint64(0x9E3779B97F4A7C15) + np.uint64((salt * 0x632BE59BD9B4E019 + 1) % (1 << 64))
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _first_voxels(mask: np.ndarray, count: int) -> list[tuple[int, int, int]]:
    """The first ``count`` voxels of ``mask`` in C order."""
    flat = np.flatnonzero(mask.ravel())[:count]
    return [tuple(int(v) for v in np.unravel_index(f, mask.shape)) for f in flat]


def make_grids(annotation: np.ndarray, resolution: float) -> dict[str, np.ndarray]:
    """The ten grid volumes (float64, C order) for ``annotation`` (AP, DV, LR) at ``resolution`` um."""
    shape = annotation.shape
    res = float(resolution)
    mid = int(round(shape[2] / 2))
    brain = annotation != 0
    right = np.zeros(shape, dtype=bool)
    right[:, :, mid:] = True
    ap, dv, lr = np.meshgrid(*(np.arange(s) * res for s in shape), indexing="ij", sparse=True)

    # Injection centre: the centroid of the injected structure's right-hemisphere voxels.
    target = (annotation == INJECTED_STRUCTURE) & right
    centre = np.array([c.mean() for c in np.nonzero(target)]) * res
    distance = np.sqrt((ap - centre[0]) ** 2 + (dv - centre[1]) ** 2 + (lr - centre[2]) ** 2)
    r_core, r_shell = 550.0, 1100.0
    core = ((distance < r_core) | target) & brain
    shell = (distance < r_shell) & ~core & brain
    fraction = np.zeros(shape)
    fraction[core] = 1.0
    fraction[shell] = ((r_shell - distance) / (r_shell - r_core))[shell] * 0.97

    # Projection: decay from the injection, a contralateral hotspot, a textured positive background.
    mirror = np.sqrt((ap - centre[0]) ** 2 + (dv - centre[1]) ** 2 + (lr - (shape[2] * res - centre[2])) ** 2)
    texture = _hash01(shape, 1)
    density = 0.002 + 0.04 * texture + 0.55 * np.exp(-distance / 900.0) + 0.35 * np.exp(-mirror / 500.0)
    density = 0.84 * np.tanh(density / 0.84)  # bounded without ties (a clip would tie voxels at the bound)
    # Inside the core the projection and injection densities are equal (AllenSDK's subtraction cancels exactly).
    density[core] = 0.75 * np.tanh(density[core] / 0.75)
    injection_density = np.where(core, density, density * fraction * 0.8)

    intensity = 500.0 + 3000.0 * _hash01(shape, 2)
    sum_pixels = np.floor(1000.0 + 5000.0 * _hash01(shape, 3))
    sum_pixels[~brain] = np.floor(50.0 * _hash01(shape, 4))[~brain]
    pixel_intensity = sum_pixels * (100.0 + 20.0 * _hash01(shape, 5))
    pixel_intensity[core] = sum_pixels[core] * 128.0

    # AAV exclusion: a blob overlapping the shell's left edge (not the core), and one whole left structure.
    blob = np.sqrt((ap - centre[0]) ** 2 + (dv - centre[1]) ** 2 + (lr - (centre[2] - 1000.0)) ** 2) < 400.0
    exclusion = np.where(blob & brain, 0.25 + 0.75 * _hash01(shape, 6), 0.0)
    exclusion[(annotation == EXCLUDED_STRUCTURE) & ~right] = 0.5

    # Missing sections: no data (garbage values that must not count), half a section, and one with no pixels.
    n_ap = shape[0]
    data_mask = np.ones(shape)
    for i in (n_ap // 5, n_ap // 5 + 1, (3 * n_ap) // 4):
        data_mask[i] = 0.0
        density[i] = 0.99
        sum_pixels[i] = 7000.0
    data_mask[n_ap // 2, : shape[1] // 2] = 0.0
    empty = (2 * n_ap) // 3
    sum_pixels[empty] = 0.0
    pixel_intensity[empty] = 0.0
    # Above every planted value (distinct values: no tie inside a structure), but no pixels there.
    density[empty] = np.where(brain[empty], 0.95 + 0.04 * _hash01(shape, 7)[empty], 0.0)

    # Planted ties (outside the injection, where the projection's valid density is the density itself).
    free = brain & (fraction == 0) & (exclusion == 0) & (data_mask > 0) & (sum_pixels > 0)
    free[empty] = False
    for tier, step in ((TOP, 7), (SECOND, 11)):
        labels = np.unique(annotation[free])
        labels = labels[(labels != 0) & (labels != labels.max())]  # never the label sorted first by AllenSDK
        chosen = set(labels[::step].tolist())
        if tier == TOP:
            chosen |= set(TIED_SIBLINGS) | set(OWN_RECORD_TIES)
        for sid in sorted(chosen):
            for side in (right, ~right):
                for voxel in _first_voxels(free & side & (annotation == sid), 1):
                    density[voxel] = tier
    # Planted injection-density tie: the first core voxel of the injected structure and of one other structure.
    for sid in (INJECTED_STRUCTURE, np.unique(annotation[core & (data_mask > 0) & (annotation != INJECTED_STRUCTURE)])[0]):
        for voxel in _first_voxels(core & (data_mask > 0) & (annotation == sid), 1):
            density[voxel] = injection_density[voxel] = INJECTION_TOP

    # Silent structures: no projection signal where they have pixels, only in the section without pixels, so
    # their projection records have sum_pixels > 0, sum_projection_pixels 0 and (AllenSDK) no max voxel.
    crossing = brain[empty] & (fraction[empty] == 0) & (exclusion[empty] == 0)
    for side in (~right[empty], right[empty]):
        labels = np.unique(annotation[empty][crossing & side])
        for sid in labels[: 2]:
            silent = (annotation == sid) & (fraction == 0)
            silent[empty] = False
            density[silent] = 0.0

    return {
        "data_mask": data_mask,
        "sum_pixels": sum_pixels,
        "injection_fraction": fraction,
        "injection_density": injection_density,
        "injection_energy": injection_density * intensity,
        "injection_sum_pixel_intensities": pixel_intensity * fraction,
        "projection_density": density,
        "projection_energy": density * intensity,
        "sum_pixel_intensities": pixel_intensity,
        "aav_exclusion_fraction": exclusion,
    }


def crop(annotation: np.ndarray, case: str) -> np.ndarray:
    """The case's annotation: the whole volume, or an AP slab (full DV and LR, so the midline is Allen's)."""
    _, window = CASES[case]
    return annotation if window is None else np.ascontiguousarray(annotation[window[0] : window[1]])
