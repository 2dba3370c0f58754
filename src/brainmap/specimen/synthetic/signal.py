"""The truth signal of a synthetic specimen: a density per reference voxel.

The **signal density** of a voxel is the expected fraction of image pixels (of image area) there that are
signal: expressing cells for ISH, labelled axons (or the injection site) for connectivity -- what Allen's
detection masks and their unionized ``expression_density`` / ``projection_density`` estimate. Volumes are
float32 ``(AP, DV, LR)`` at the reference resolution asked for (25 um for the truth files, 100 um in tests),
in the annotation's memory order.

ISH (:func:`expression_profile`)
--------------------------------
A gene's pattern is drawn from a random generator seeded with a hash of ``(gene symbol, seed)``: the same
gene always gives the same pattern. It is hierarchical:

* **level**: the gene's peak expressing fraction, ``10**U(-1.3, -0.4)`` (0.05 .. 0.4);
* **major divisions** (Isocortex, OLF, HPF, CTXsp, STR, PAL, TH, HY, MB, P, MY, CB): each is "on" with a
  gene-specific probability ``breadth ~ Beta(1.2, 2.5)`` (at least one is on), with factor ``U(0.4, 1)``, else
  ``U(0, 0.03)``; structures outside the divisions get ``U(0, 0.3)``;
* **fine structure**: every structure below its division multiplies in a factor of its own (from a hash of
  ``(gene, structure id)``): 12 % strong ``U(1.5, 3)``, 33 % nearly off ``U(0, 0.15)``, the rest ``U(0.5,
  1.2)``; the factors multiply down the tree, so areas, their layers and nuclei differ;
* **fibre tracts** express only for a "white matter" gene (10 % of genes, factor ``U(0.3, 0.8)``), else
  ``U(0, 0.01)``; ventricles never.

``expression_fraction = clip(level * division * fine, 0, 0.6)``: many structures near zero, a few strong.
``expression_intensity`` (relative stain of one expressing cell, 0..1) = ``0.35 + 0.65 sqrt(fraction /
max fraction) * U(0.75, 1)``. Cells are discs of diameter ``U(10, 15)`` um per gene.

Connectivity (:func:`projection_profile`)
-----------------------------------------
From the real tables: the injection coordinate and volume of the Knox et al. 2019 experiment, and its
normalized projection volumes (NPV) per structure and hemisphere from Oh et al. 2014. The injection site is a
sphere of the experiment's injection volume centred on ``injection_x/y/z``; its **injection fraction** per
voxel is the fraction of the voxel inside the sphere (a linear ramp one voxel wide across the surface),
inside the brain only. Oh 2014 acronyms are CCF v2; they are matched to the current ontology by acronym
(whitespace stripped); unmatched ones and values of -1 (missing) are skipped and reported. Each voxel
belongs to the deepest table structure containing it (its *territory*; a parent in the table keeps only the
voxels of none of its table descendants, and its NPV minus theirs). The projection density ``d(S, h)`` is
uniform up to texture and chosen so that

    sum over voxels v of S, h of  (1 - f_v) d(S, h) * voxel volume  /  injection volume  =  NPV(S, h)

(``f`` = injection fraction). The injection site is drawn as signal, but it does not count towards a
structure's NPV: Allen's projection record is the structure's signal minus its injection record (AllenSDK's
``TissuecyteProjectionUnionize`` subtracts it, and brainmap's unionizer does the same), so only the signal
outside the site, ``(1 - f) d`` per voxel, is projection. Hence ``d = NPV V_inj / sum (1 - f_v) V_vox``. When any ``d`` exceeds
:data:`MAX_PROJECTION_DENSITY` (0.5), all are scaled down by one factor (``density_scale``, recorded); the
NPVs are then met up to that factor. Voxels in no table structure (fibre tracts, ventricles, structures the
2014 table lacks) have density 0 outside the injection site. The signal density volume is
``f + (1 - f) d``.

Texture
-------
Inside each structure (ISH: each annotated label; connectivity: each territory) and hemisphere, the density is
multiplied by ``t = max(1 + 0.35 N, 0.15)`` (``N`` a smooth random field, unit variance, correlation length
~300 um) divided by the structure's mean of ``t``, so each structure's mean density is unchanged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage

from brainmap.atlas import ReferenceSpace, StructureTree
from brainmap.data import tables
from brainmap.specimen.synthetic.template import hash_uniform, upsample_linear

__all__ = [
    "MAJOR_DIVISIONS",
    "MAX_PROJECTION_DENSITY",
    "ExpressionProfile",
    "ProjectionProfile",
    "TruthVolumes",
    "expression_profile",
    "injection_fraction",
    "projection_profile",
    "truth_density",
    "voxel_mean_density",
]

#: The 12 major brain divisions used as the coarse level of ISH patterns.
MAJOR_DIVISIONS = (315, 698, 1089, 703, 477, 803, 549, 1097, 313, 771, 354, 512)
FIBER_TRACTS, VENTRICULAR_SYSTEMS = 1009, 73
#: Upper bound of a structure's mean projection density (fraction of pixels); larger ones scale all down.
MAX_PROJECTION_DENSITY = 0.5
#: Upper bound of the ISH expressing fraction of a structure.
MAX_EXPRESSION_FRACTION = 0.6
#: Texture inside structures: amplitude and correlation length (um) of the smooth field.
TEXTURE_AMPLITUDE = 0.35
TEXTURE_SIGMA_UM = 300.0
TEXTURE_GRID_UM = 100.0


def gene_seed(gene: str, seed: int = 0) -> int:
    """A 63-bit integer from the gene symbol (whitespace stripped, case kept) and ``seed`` (SHA-256)."""
    digest = hashlib.sha256(f"{gene.strip()}|{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# -- ISH ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExpressionProfile:
    """A gene's synthetic expression pattern, per structure in ``structure_ids`` order (the tree's preorder).

    Attributes:
        gene: the gene symbol.
        seed: the seed mixed with the gene symbol.
        structure_ids: structure ids, preorder.
        fraction: expected fraction of expressing pixels (area) of each structure, 0..0.6.
        intensity: relative stain intensity of an expressing cell in each structure, 0..1.
        cell_diameter_um: diameter of an expressing cell (disc), microns.
        info: the gene-level draws (level, breadth, divisions on, white-matter gene).
    """

    gene: str
    seed: int
    structure_ids: np.ndarray
    fraction: np.ndarray
    intensity: np.ndarray
    cell_diameter_um: float
    info: dict[str, Any] = field(default_factory=dict)

    def to_frame(self, tree: StructureTree) -> pd.DataFrame:
        """``structure_id, acronym, expression_fraction, expression_intensity`` per structure."""
        acronyms = tree.get_acronym_map()
        return pd.DataFrame({
            "structure_id": self.structure_ids,
            "acronym": [acronyms[int(s)] for s in self.structure_ids],
            "expression_fraction": self.fraction,
            "expression_intensity": self.intensity,
        })


def _preorder(tree: StructureTree):
    from brainmap.atlas.label_index import OntologyOrder

    return OntologyOrder.from_tree(tree)


def expression_profile(gene: str, tree: StructureTree, seed: int = 0) -> ExpressionProfile:
    """The synthetic expression pattern of ``gene`` (any symbol; deterministic per ``(gene, seed)``), per
    structure of ``tree`` in preorder. See the module docstring for the model."""
    if not isinstance(gene, str) or not gene.strip():
        raise ValueError(f"gene must be a non-empty gene symbol, got {gene!r}")
    gseed = gene_seed(gene, seed)
    rng = np.random.default_rng(gseed)
    order = _preorder(tree)
    ids, parent = order.ids, order.parent
    n = len(ids)
    level = 10 ** rng.uniform(-1.3, -0.4)
    breadth = rng.beta(1.2, 2.5)
    on = rng.random(len(MAJOR_DIVISIONS)) < breadth
    if not on.any():
        on[rng.integers(len(MAJOR_DIVISIONS))] = True
    division_factor = np.where(on, rng.uniform(0.4, 1.0, len(MAJOR_DIVISIONS)),
                               rng.uniform(0.0, 0.03, len(MAJOR_DIVISIONS)))
    white_matter_gene = bool(rng.random() < 0.10)
    cell_diameter = float(rng.uniform(10.0, 15.0))

    u_kind = hash_uniform(gseed % (2**62), ids, salt=11)
    u_value = hash_uniform(gseed % (2**62), ids, salt=12)
    node = np.where(u_kind < 0.12, 1.5 + 1.5 * u_value,
                    np.where(u_kind < 0.45, 0.15 * u_value, 0.5 + 0.7 * u_value))
    value = np.zeros(n)
    anchored = np.zeros(n, dtype=bool)  # below (or at) a division, fibre tracts or ventricles
    division_of = {sid: f for sid, f in zip(MAJOR_DIVISIONS, division_factor)}
    outside = rng.uniform(0.0, 0.3)
    fibre = rng.uniform(0.3, 0.8) if white_matter_gene else rng.uniform(0.0, 0.01)
    for k in range(n):  # preorder: a parent comes before its children (~1300 structures, not voxels)
        sid, p = int(ids[k]), int(parent[k])
        if sid in division_of:
            value[k], anchored[k] = division_of[sid], True
        elif sid == FIBER_TRACTS:
            value[k], anchored[k] = fibre, True
        elif sid == VENTRICULAR_SYSTEMS:
            value[k], anchored[k] = 0.0, True
        elif p >= 0 and anchored[p]:
            value[k], anchored[k] = value[p] * node[k], True
        else:
            value[k] = outside
    fraction = np.clip(level * value, 0.0, MAX_EXPRESSION_FRACTION)
    top = fraction.max() if fraction.max() > 0 else 1.0
    intensity = 0.35 + 0.65 * np.sqrt(fraction / top) * (0.75 + 0.25 * hash_uniform(gseed % (2**62), ids, 13))
    info = {"level": float(level), "breadth": float(breadth), "white_matter_gene": white_matter_gene,
            "divisions_on": [int(s) for s, o in zip(MAJOR_DIVISIONS, on) if o]}
    return ExpressionProfile(gene=gene.strip(), seed=int(seed), structure_ids=ids.copy(), fraction=fraction,
                             intensity=np.clip(intensity, 0.0, 1.0), cell_diameter_um=cell_diameter, info=info)


# -- connectivity ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProjectionProfile:
    """A connectivity experiment's synthetic truth, per table structure and hemisphere.

    Attributes:
        experiment_id: the Allen experiment id.
        injection_center_um: ``(AP, DV, LR)`` microns (Knox 2019 ``injection_x/y/z``).
        injection_volume_mm3: the injection volume (Knox 2019).
        injection_radius_um: radius of the sphere of that volume.
        primary_injection_structure: structure id.
        table: one row per Oh 2014 acronym and hemisphere: ``oh2014_acronym``, ``structure_id`` (current
            ontology; -1 if unmatched), ``acronym``, ``hemisphere_id``, ``normalized_projection_volume``
            (as in the table), ``status`` ("used", "missing" for -1, "unknown acronym", "no voxels"),
            ``voxels`` (territory voxels), ``injection_voxels`` (sum of the injection fraction there),
            ``projection_density`` (``d``, after ``density_scale``), ``achieved_npv`` (what the truth volume
            gives).
        density_scale: the factor applied to every ``d`` so that none exceeds :data:`MAX_PROJECTION_DENSITY`
            (1.0 when none did).
        skipped_acronyms: Oh 2014 acronyms absent from the current ontology.
    """

    experiment_id: int
    injection_center_um: tuple[float, float, float]
    injection_volume_mm3: float
    injection_radius_um: float
    primary_injection_structure: int
    table: pd.DataFrame
    density_scale: float
    skipped_acronyms: list[str]


def injection_fraction(space: ReferenceSpace, center_um: Any, volume_mm3: float) -> np.ndarray:
    """The fraction of each voxel inside the injection sphere (centre ``(AP, DV, LR)`` um, volume mm^3),
    inside the brain only (annotation != 0): float32 ``(AP, DV, LR)`` in the annotation's memory order.
    The fraction ramps linearly from 1 to 0 over one voxel across the sphere's surface (exact volume to first
    order); only the sphere's bounding box is computed."""
    center = np.asarray(center_um, dtype=np.float64)
    radius = (3.0 * float(volume_mm3) * 1e9 / (4.0 * np.pi)) ** (1.0 / 3.0)
    res = space.resolution
    out = np.zeros_like(space.annotation, dtype=np.float32)
    lo = np.maximum(np.floor((center - radius) / res - 1).astype(int), 0)
    hi = np.minimum(np.ceil((center + radius) / res + 1).astype(int), np.asarray(space.shape))
    if np.any(hi <= lo):
        return out
    axes = [(np.arange(lo[a], hi[a]) + 0.5) * res[a] - center[a] for a in range(3)]
    dist = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    box = tuple(slice(lo[a], hi[a]) for a in range(3))
    frac = np.clip((radius - dist) / float(np.mean(res)) + 0.5, 0.0, 1.0)
    out[box] = frac * (space.annotation[box] != 0)
    return out


def _territories(order, table_positions: np.ndarray) -> np.ndarray:
    """For every preorder position, the position of its deepest ancestor-or-self in ``table_positions``
    (-1 if none)."""
    is_table = np.zeros(len(order), dtype=bool)
    is_table[table_positions] = True
    territory = np.full(len(order), -1, dtype=np.int64)
    for k in range(len(order)):  # preorder: parents first (structures, not voxels)
        if is_table[k]:
            territory[k] = k
        elif order.parent[k] >= 0:
            territory[k] = territory[order.parent[k]]
    return territory


def _by_hemisphere(space: ReferenceSpace, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-label sums (or voxel counts) in each hemisphere: ``(2, n)`` float64, rows left, right."""
    index = space.label_index
    return np.stack([index.direct_counts(weights=weights, region=space.hemisphere_region(h)).astype(np.float64)
                     for h in (1, 2)])


def _paint_by_hemisphere(space: ReferenceSpace, values: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Paint per-label values ``(2, n)`` (left, right rows, preorder) into a float32 volume (one lookup per
    hemisphere half, in the annotation's memory order)."""
    compact = space.label_index.compact
    out = np.empty_like(compact, dtype=np.float32)
    for row, h in enumerate((1, 2)):
        region = space.hemisphere_region(h)
        table = np.concatenate([[fill], values[row]]).astype(np.float32)
        out[region] = table[compact[region]]
    return out


def projection_profile(experiment_id: int, space: ReferenceSpace,
                       injection: np.ndarray | None = None) -> ProjectionProfile:
    """The synthetic truth of a connectivity experiment on ``space`` (see the module docstring).

    Args:
        experiment_id: an experiment in both the Knox 2019 and Oh 2014 tables
            (:func:`brainmap.data.tables.synthetic_connectivity_experiment_ids`); others raise
            :class:`~brainmap.data.tables.UnknownExperimentError`.
        space: the reference space at the truth resolution.
        injection: the injection fraction volume if already computed (:func:`injection_fraction`).
    """
    record = tables.connectivity_experiment(experiment_id)
    center = (float(record["injection_x"]), float(record["injection_y"]), float(record["injection_z"]))
    volume_mm3 = float(record["injection_volume"])
    if injection is None:
        injection = injection_fraction(space, center, volume_mm3)
    rows = tables.projection_volumes_of(experiment_id)
    tree, order = space.structure_tree, space.ontology_order
    id_of = tree.get_id_acronym_map()
    rows["structure_id"] = [int(id_of.get(a, -1)) for a in rows["structure_acronym"]]
    skipped = sorted(set(rows.loc[rows["structure_id"] < 0, "structure_acronym"]))
    known = rows[rows["structure_id"] >= 0]
    positions = order.positions(sorted(set(known["structure_id"])))
    territory = _territories(order, positions)

    voxel_mm3 = float(np.prod(space.resolution)) * 1e-9
    n = len(order)
    counts = _by_hemisphere(space)
    inj = _by_hemisphere(space, injection)
    # Aggregate per territory (position of its table structure), per hemisphere.
    inside = territory >= 0
    terr_counts = np.zeros((2, n))
    terr_inj = np.zeros((2, n))
    for row in range(2):
        np.add.at(terr_counts[row], territory[inside], counts[row, inside])
        np.add.at(terr_inj[row], territory[inside], inj[row, inside])

    npv = np.zeros((2, n))
    status_at: dict[tuple[int, int], str] = {}
    for _, r in known.iterrows():
        k, h = order.position[int(r["structure_id"])], int(r["hemisphere_id"])
        value = float(r["normalized_projection_volume"])
        if value < 0:
            status_at[(k, h)] = "missing"
            continue
        npv[h - 1, k] = value
        status_at[(k, h)] = "used" if terr_counts[h - 1, k] > 0 else "no voxels"
    # A parent in the table keeps its NPV minus its table descendants' (their voxels are theirs).
    own_npv = npv.copy()
    for k in positions:
        p = order.parent[k]
        ancestor = territory[p] if p >= 0 else -1
        if ancestor >= 0:
            own_npv[:, ancestor] -= npv[:, k]
    own_npv = np.maximum(own_npv, 0.0)
    free = (terr_counts - terr_inj) * voxel_mm3
    with np.errstate(divide="ignore", invalid="ignore"):
        density = np.where(free > 0, own_npv * volume_mm3 / free, 0.0)
    density = np.clip(density, 0.0, None)
    top = float(density.max()) if density.size else 0.0
    scale = MAX_PROJECTION_DENSITY / top if top > MAX_PROJECTION_DENSITY else 1.0
    density *= scale

    achieved = density * free / volume_mm3  # the projection record: the injection record subtracted
    acronyms = tree.get_acronym_map()
    records = []
    for _, r in rows.iterrows():
        sid, h = int(r["structure_id"]), int(r["hemisphere_id"])
        if sid < 0:
            records.append({"oh2014_acronym": r["structure_acronym"], "structure_id": -1, "acronym": "",
                            "hemisphere_id": h, "normalized_projection_volume": float(
                                r["normalized_projection_volume"]), "status": "unknown acronym", "voxels": 0,
                            "injection_voxels": 0.0, "projection_density": 0.0, "achieved_npv": 0.0})
            continue
        k = order.position[sid]
        status = status_at[(k, h)]
        records.append({
            "oh2014_acronym": r["structure_acronym"], "structure_id": sid, "acronym": acronyms[sid],
            "hemisphere_id": h, "normalized_projection_volume": float(r["normalized_projection_volume"]),
            "status": status, "voxels": int(terr_counts[h - 1, k]), "injection_voxels": float(terr_inj[h - 1, k]),
            "projection_density": float(density[h - 1, k]) if status == "used" else 0.0,
            "achieved_npv": float(achieved[h - 1, k]) if status == "used" else 0.0,
        })
    table = pd.DataFrame.from_records(records).sort_values(["structure_id", "hemisphere_id"]).reset_index(drop=True)
    radius = (3.0 * volume_mm3 * 1e9 / (4.0 * np.pi)) ** (1.0 / 3.0)
    return ProjectionProfile(experiment_id=int(experiment_id), injection_center_um=center,
                             injection_volume_mm3=volume_mm3, injection_radius_um=float(radius),
                             primary_injection_structure=int(record["primary_injection_structure"]),
                             table=table, density_scale=float(scale), skipped_acronyms=skipped)


# -- texture and volumes --------------------------------------------------------------------------------------
def structure_texture(space: ReferenceSpace, seed: int) -> np.ndarray:
    """The smooth positive texture field ``t = max(1 + 0.35 N, 0.15)`` (float32, annotation memory order); ``N``
    has unit variance and a correlation length of ~300 um, on a fixed 100 um grid (so it is the same field at
    every resolution for one seed)."""
    grid = tuple(int(np.ceil(e / TEXTURE_GRID_UM)) + 1 for e in space.extent_um)
    rng = np.random.default_rng([int(seed), 0x5167])
    noise = ndimage.gaussian_filter(rng.standard_normal(grid), TEXTURE_SIGMA_UM / TEXTURE_GRID_UM, mode="wrap")
    noise = (noise - noise.mean()) / (noise.std() + 1e-12)
    coarse = np.maximum(1.0 + TEXTURE_AMPLITUDE * noise, 0.15).astype(np.float32)
    fortran = bool(space.annotation.flags.f_contiguous and not space.annotation.flags.c_contiguous)
    return upsample_linear(coarse, TEXTURE_GRID_UM, space.shape, space.resolution, fortran)


def _mean_preserving(space: ReferenceSpace, per_label: np.ndarray, texture: np.ndarray,
                     weights: np.ndarray | None = None, group: np.ndarray | None = None) -> np.ndarray:
    """``value(label, h) * t / mean of t over the label's group and hemisphere`` as a float32 volume.

    ``per_label`` is ``(2, n)`` (left, right) by preorder position; ``group`` maps each position to the
    position whose mean is used (connectivity territories; default each label itself); ``weights`` (a volume)
    weights the mean (the non-injected fraction ``1 - f``).
    """
    n = per_label.shape[1]
    wt = texture if weights is None else texture * weights
    sums = _by_hemisphere(space, wt)
    norm = _by_hemisphere(space, weights) if weights is not None else _by_hemisphere(space)
    if group is not None:
        inside = group >= 0
        gs, gn = np.zeros((2, n)), np.zeros((2, n))
        for row in range(2):
            np.add.at(gs[row], group[inside], sums[row, inside])
            np.add.at(gn[row], group[inside], norm[row, inside])
        safe = np.where(group >= 0, group, 0)
        sums, norm = gs[:, safe], gn[:, safe]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(norm > 0, sums / norm, 1.0)
    factor = np.where(mean > 0, per_label / mean, 0.0)
    volume = _paint_by_hemisphere(space, factor)
    volume *= texture
    return volume


def voxel_mean_density(volume: np.ndarray, resolution_um: float, grid_um: float | None = None) -> np.ndarray:
    """The true density of each voxel of a grid: the mean over the voxel of the density field the renderer
    draws from ``volume``.

    The renderer samples a truth volume trilinearly between voxel centres (``(i + 0.5) * resolution_um``; 0
    beyond the outermost centres), so the field's mean over voxel ``i`` is ``v[i - 1] / 8 + 3 v[i] / 4 +
    v[i + 1] / 8`` along each axis (``3 v[i] / 8 + v[i +- 1] / 8`` for the first and last voxels) -- not the
    centre value ``v[i]``: that is the expected fraction of signal pixels in the
    voxel, what a grid of the images estimates. ``grid_um`` (an integer multiple of ``resolution_um``; default
    the same) averages blocks of those means (partial blocks at the far faces average what they hold).
    float64 ``(AP, DV, LR)``.
    """
    out = np.asarray(volume, dtype=np.float64)
    for axis in range(out.ndim):
        current = out
        out = ndimage.correlate1d(current, [0.125, 0.75, 0.125], axis=axis, mode="constant", cval=0.0)
        # the field is 0 over the outer half of the first and last voxels (no interpolation beyond the
        # outermost centres): their own weight is 3/8, not 3/4
        for edge in (0, -1):
            index = [slice(None)] * out.ndim
            index[axis] = edge
            out[tuple(index)] -= 0.375 * current[tuple(index)]
    if grid_um is None or abs(grid_um - resolution_um) < 1e-6:
        return out
    factor = int(round(grid_um / resolution_um))
    if factor < 1 or abs(factor * resolution_um - grid_um) > 1e-6:
        raise ValueError(f"grid_um must be an integer multiple of the truth resolution {resolution_um} um, "
                         f"got {grid_um}")
    shape = tuple(-(-n // factor) for n in out.shape)
    padded = np.zeros(tuple(n * factor for n in shape))
    weight = np.zeros_like(padded)
    padded[tuple(slice(0, n) for n in out.shape)] = out
    weight[tuple(slice(0, n) for n in out.shape)] = 1.0
    blocks = lambda a: a.reshape(shape[0], factor, shape[1], factor, shape[2], factor).sum(axis=(1, 3, 5))  # noqa: E731
    return blocks(padded) / blocks(weight)


@dataclass
class TruthVolumes:
    """The truth of a synthetic specimen on the reference grid.

    Attributes:
        product: ``"ish"`` or ``"connectivity"``.
        resolution_um: voxel size (um) of the volumes.
        signal_density: float32 ``(AP, DV, LR)``, expected fraction of signal pixels (0..1).
        injection_fraction: connectivity: float32 ``(AP, DV, LR)`` fraction of each voxel in the injection
            site; ``None`` for ISH.
        expression_intensity: ISH: float32 ``(AP, DV, LR)`` relative stain intensity of expressing cells
            (per structure, used by the renderer); ``None`` for connectivity.
        profile: per structure and hemisphere: what was used (written as ``truth/profile.csv``), with
            ``mean_density`` (the volume's mean over the structure with its descendants, per hemisphere).
        expression: the ISH :class:`ExpressionProfile`, or ``None``.
        projection: the connectivity :class:`ProjectionProfile`, or ``None``.
    """

    product: str
    resolution_um: float
    signal_density: np.ndarray
    injection_fraction: np.ndarray | None = None
    expression_intensity: np.ndarray | None = None
    profile: pd.DataFrame | None = None
    expression: ExpressionProfile | None = None
    projection: ProjectionProfile | None = None

    def density_on_grid(self, grid_um: float | None = None) -> np.ndarray:
        """The true density of each voxel of a grid of ``grid_um`` (default the truth's resolution): the mean of
        the rendered density field over the voxel (:func:`voxel_mean_density`)."""
        return voxel_mean_density(self.signal_density, self.resolution_um, grid_um)


def _mean_density_table(space: ReferenceSpace, density: np.ndarray) -> pd.DataFrame:
    """``structure_id, hemisphere_id, structure_voxels, mean_density`` of a volume, structures with descendants."""
    index = space.label_index
    frames = []
    for h in (1, 2):
        region = space.hemisphere_region(h)
        counts = index.roll_up(index.direct_counts(region=region).astype(np.float64))
        sums = index.roll_up(index.direct_counts(weights=density, region=region))
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(counts > 0, sums / counts, np.nan)
        frames.append(pd.DataFrame({"structure_id": space.ontology_order.ids, "hemisphere_id": h,
                                    "structure_voxels": counts.astype(np.int64), "mean_density": mean}))
    return pd.concat(frames, ignore_index=True)


def truth_density(product: str, *, experiment_id: int | None = None, gene: str | None = None,
                  resolution_um: int = 25, seed: int = 0, space: ReferenceSpace | None = None) -> TruthVolumes:
    """The truth signal volumes of a synthetic specimen.

    Args:
        product: ``"connectivity"`` (needs ``experiment_id``) or ``"ish"`` (needs ``gene``, any symbol;
            :func:`~brainmap.specimen.synthetic.make.make_specimen` checks it against the ISH table).
        resolution_um: the reference resolution (25, 50 or 100 um bundled); ignored when ``space`` is given.
        seed: texture (and, with the gene, the expression pattern) seed.
        space: the reference space to use (default ``ReferenceSpace.bundled(resolution_um)``).

    Returns:
        :class:`TruthVolumes`: the signal density (both), injection fraction (connectivity), expression
        intensity (ISH), and the per-structure profile table.
    """
    if product not in ("ish", "connectivity"):
        raise ValueError(f"product must be 'ish' or 'connectivity', got {product!r}")
    space = space or ReferenceSpace.bundled(resolution_um)
    res = float(space.resolution[0])
    texture = structure_texture(space, seed)
    if product == "connectivity":
        if experiment_id is None:
            raise ValueError("a connectivity truth needs experiment_id")
        record = tables.connectivity_experiment(experiment_id)
        center = (record["injection_x"], record["injection_y"], record["injection_z"])
        f = injection_fraction(space, center, float(record["injection_volume"]))
        proj = projection_profile(experiment_id, space, injection=f)
        order = space.ontology_order
        used = proj.table[proj.table["status"] == "used"]
        per_label = np.zeros((2, len(order)))
        for _, r in used.iterrows():
            per_label[int(r["hemisphere_id"]) - 1, order.position[int(r["structure_id"])]] = r["projection_density"]
        territory = _territories(order, order.positions(sorted(set(proj.table.loc[proj.table["structure_id"] >= 0,
                                                                                    "structure_id"]))))
        safe = np.where(territory >= 0, territory, 0)
        per_label = np.where(territory >= 0, per_label[:, safe], 0.0)
        free = 1.0 - f
        density = _mean_preserving(space, per_label, texture, weights=free, group=territory)
        np.clip(density, 0.0, 1.0, out=density)
        density *= free
        density += f
        means = _mean_density_table(space, density)
        profile = proj.table.merge(means, on=["structure_id", "hemisphere_id"], how="left")
        return TruthVolumes(product=product, resolution_um=res, signal_density=density, injection_fraction=f,
                            profile=profile, projection=proj)
    if gene is None:
        raise ValueError("an ISH truth needs gene")
    expr = expression_profile(gene, space.structure_tree, seed)
    order = space.ontology_order
    if not np.array_equal(expr.structure_ids, order.ids):  # the same tree, so the same preorder
        raise ValueError("the expression profile's structures differ from the space's ontology")
    per_label = np.vstack([expr.fraction, expr.fraction])
    density = _mean_preserving(space, per_label, texture)
    np.clip(density, 0.0, 0.95, out=density)
    intensity = space.label_index.lookup(expr.intensity.astype(np.float32))
    frame = expr.to_frame(space.structure_tree)
    frame = pd.concat([frame.assign(hemisphere_id=h) for h in (1, 2)], ignore_index=True)
    profile = frame.merge(_mean_density_table(space, density), on=["structure_id", "hemisphere_id"], how="left")
    return TruthVolumes(product=product, resolution_um=res, signal_density=density,
                        expression_intensity=intensity, profile=profile, expression=expr)
