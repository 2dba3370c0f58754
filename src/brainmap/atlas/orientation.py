"""Orientations of volumes and points: Allen's PIR and the RAS / LPS conventions of other tools.

An orientation is three letters, one per array axis, each naming the direction in which that axis' index
grows: P(osterior)/A(nterior), I(nferior)/S(uperior), R(ight)/L(eft). Allen's CCF volumes, as pynrrd reads
them, are ``"pir"``: axis 0 runs anterior -> posterior, axis 1 superior -> inferior, axis 2 left -> right.
RAS (NIfTI, Slicer world) and LPS (ITK/DICOM world) name the other usual ones.

Converting a volume permutes and flips its axes; converting points permutes their coordinates and mirrors the
flipped ones inside the volume's extent (``x' = extent - x``), so that coordinates stay within the box
``[0, extent)`` and a point keeps its place in the brain.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_OPPOSITE = {"p": "a", "a": "p", "i": "s", "s": "i", "r": "l", "l": "r"}
_AXIS_OF = {"p": 0, "a": 0, "i": 1, "s": 1, "r": 2, "l": 2}


def _check(orientation: str) -> str:
    o = orientation.lower()
    if len(o) != 3 or any(c not in _AXIS_OF for c in o) or len({_AXIS_OF[c] for c in o}) != 3:
        raise ValueError(
            f"orientation {orientation!r} is not three distinct axis letters from (p|a)(i|s)(r|l), e.g. 'pir', 'ras'"
        )
    return o


def orientation_mapping(source: str, target: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """For each target axis: the source axis it comes from, and whether its direction is flipped."""
    src, tgt = _check(source), _check(target)
    axes, flips = [], []
    for letter in tgt:
        if letter in src:
            axes.append(src.index(letter))
            flips.append(False)
        else:
            axes.append(src.index(_OPPOSITE[letter]))
            flips.append(True)
    return tuple(axes), tuple(flips)


def reorient_volume(volume: np.ndarray, source: str = "pir", target: str = "ras") -> np.ndarray:
    """Permute and flip the axes of a 3-D ``volume`` from ``source`` to ``target`` orientation (a view)."""
    axes, flips = orientation_mapping(source, target)
    out = np.transpose(volume, axes)
    return out[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]


def reorient_points(
    points: np.ndarray, extent: Sequence[float], source: str = "pir", target: str = "ras"
) -> np.ndarray:
    """Express (N, 3) points given in ``source`` axes in ``target`` axes.

    Parameters
    ----------
    points : (N, 3) or (3,) array
        Coordinates in the source orientation (microns, or voxel units).
    extent : 3 numbers
        Size of the volume along each *source* axis, in the same units as ``points``
        (e.g. ``shape * resolution`` for microns; ``shape`` for continuous voxel coordinates).

    Returns
    -------
    (N, 3) float array in the target orientation; a flipped axis is mirrored as ``extent - x``.
    """
    pts = np.asarray(points, dtype=np.float64)
    axes, flips = orientation_mapping(source, target)
    out = pts[..., list(axes)].copy()
    ext = np.asarray(extent, dtype=np.float64)[list(axes)]
    for k, flipped in enumerate(flips):
        if flipped:
            out[..., k] = ext[k] - out[..., k]
    return out
