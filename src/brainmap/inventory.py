"""What this installation holds: versions and the bundled data files (for ``brainmap info``)."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata

from brainmap import __version__
from brainmap.atlas import bundled

_DEPENDENCIES = ("numpy", "pandas", "pynrrd", "pillow", "tqdm")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def bundled_files() -> list[dict]:
    """Each bundled data file: name, size in bytes and sha256."""
    rows = []
    for path in sorted(bundled.data_dir().iterdir()):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            rows.append({"name": path.name, "bytes": path.stat().st_size, "sha256": digest})
    return rows


def describe_installation() -> str:
    """A plain-text report: brainmap and dependency versions, the bundled files and the ontology."""
    from brainmap.atlas import StructureTree

    tree = StructureTree.bundled()
    lines = [
        f"brainmap {__version__} (Python {platform.python_version()}, {platform.machine()})",
        "dependencies: " + ", ".join(f"{p} {_version(p)}" for p in _DEPENDENCIES),
        f"bundled data ({bundled.data_dir()}): Allen CCF v3, 2017 annotation; see DATA_NOTICE.md",
    ]
    lines += [f"  {f['name']:<22} {f['bytes']:>10,} bytes  sha256 {f['sha256'][:16]}..." for f in bundled_files()]
    shapes = ", ".join(f"{r} um {'x'.join(map(str, bundled.ANNOTATION_SHAPES[r]))}" for r in bundled.BUNDLED_RESOLUTIONS)
    lines += [
        f"annotation resolutions: {shapes} (AP x DV x LR voxels)",
        f"ontology: {len(tree)} structures, {len(tree.get_structure_sets())} structure sets",
    ]
    return "\n".join(lines)
