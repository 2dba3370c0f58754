"""Compare the grids and unionize tables of two demo (or ``brainmap run``) folders.

    python -m benchmarks.compare_demo FOLDER_A FOLDER_B

For every data set folder (``specimens/*`` or the folders themselves) in both: each file under
``pipeline/grids`` -- an NRRD by its header and its inflated data (the gzip streams may differ: ISA-L's deflate
can emit another valid stream for the same data), a zip by its members' contents, any other file byte for byte --
and ``pipeline/structure_unionizes.csv`` byte for byte. Where two float volumes differ, prints the largest
relative difference. Exit status 0 when everything is the same, 1 otherwise.
"""

from __future__ import annotations

import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np

from brainmap.io.nrrd import read_nrrd


def _split_nrrd(path: Path) -> tuple[bytes, bytes]:
    """(header bytes up to the blank line, the data inflated when gzip-encoded)."""
    raw = path.read_bytes()
    end = raw.find(b"\n\n")
    if end < 0:
        raise ValueError(f"{path}: no end of NRRD header")
    header, payload = raw[: end + 2], raw[end + 2:]
    if b"encoding: gzip" in header or b"encoding: gz" in header:
        payload = zlib.decompress(payload, zlib.MAX_WBITS | 32)
    return header, payload


def _relative_difference(a: Path, b: Path) -> str:
    try:
        va, vb = read_nrrd(a)[0], read_nrrd(b)[0]
    except ValueError as error:  # pragma: no cover - a malformed file
        return f"unreadable: {error}"
    if va.shape != vb.shape:
        return f"shapes {va.shape} and {vb.shape}"
    va, vb = va.astype(np.float64), vb.astype(np.float64)
    scale = np.maximum(np.abs(va), np.abs(vb))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.where(scale > 0, np.abs(va - vb) / scale, 0.0)
    return f"{np.count_nonzero(va != vb)} voxels differ, max relative difference {float(rel.max()):.3g}"


def _zip_members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _datasets(folder: Path) -> dict[str, Path]:
    root = folder / "specimens" if (folder / "specimens").is_dir() else folder
    return {p.name: p for p in sorted(root.iterdir()) if (p / "pipeline").is_dir()}


def compare(a: Path, b: Path) -> list[str]:
    """The differences between two folders' grids and unionize tables (empty: the same)."""
    problems: list[str] = []
    sets_a, sets_b = _datasets(a), _datasets(b)
    if set(sets_a) != set(sets_b):
        problems.append(f"data sets differ: {sorted(set(sets_a) ^ set(sets_b))}")
    if not sets_a:
        problems.append(f"no data set folders with pipeline/ under {a}")
    files = 0
    for name in sorted(set(sets_a) & set(sets_b)):
        grids_a, grids_b = sets_a[name] / "pipeline" / "grids", sets_b[name] / "pipeline" / "grids"
        names_a = {p.name for p in grids_a.iterdir()} if grids_a.is_dir() else set()
        names_b = {p.name for p in grids_b.iterdir()} if grids_b.is_dir() else set()
        if names_a != names_b:
            problems.append(f"{name}: grid files differ: {sorted(names_a ^ names_b)}")
        for file_name in sorted(names_a & names_b):
            pa, pb = grids_a / file_name, grids_b / file_name
            files += 1
            if file_name.endswith(".nrrd"):
                (ha, da), (hb, db) = _split_nrrd(pa), _split_nrrd(pb)
                if ha != hb:
                    problems.append(f"{name}/{file_name}: headers differ")
                if da != db:
                    problems.append(f"{name}/{file_name}: data differ ({_relative_difference(pa, pb)})")
            elif file_name.endswith(".zip"):
                if _zip_members(pa) != _zip_members(pb):
                    problems.append(f"{name}/{file_name}: members differ")
            elif pa.read_bytes() != pb.read_bytes():
                problems.append(f"{name}/{file_name}: bytes differ")
        ua, ub = sets_a[name] / "pipeline" / "structure_unionizes.csv", sets_b[name] / "pipeline" / "structure_unionizes.csv"
        files += 1
        if not (ua.is_file() and ub.is_file()) or ua.read_bytes() != ub.read_bytes():
            problems.append(f"{name}/structure_unionizes.csv differs (or is missing)")
    print(f"compared {files} files of {len(sets_a)} data sets")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    problems = compare(Path(argv[0]), Path(argv[1]))
    for line in problems:
        print(line)
    print("the same" if not problems else f"{len(problems)} difference(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
