"""Shared fixtures: the bundled reference spaces (loaded once per session) and the optional shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainmap.atlas import ReferenceSpace, StructureTree

#: Real Allen data beside the project (../shared/data); tests that need files not bundled skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_DATA = Path(__file__).resolve().parent / "data"


def shared_file(relative: str) -> Path:
    """A file of ../shared/data, or skip the test (with the reason) where it is absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"needs {relative} from ../shared/data, which is not present in this checkout")
    return path


@pytest.fixture(scope="session")
def shared_data():
    """``shared_data("ish/x.mnc")``: the path of an optional ../shared/data file, or skip saying why."""
    return shared_file


@pytest.fixture(scope="session")
def tree() -> StructureTree:
    return StructureTree.bundled()


@pytest.fixture(scope="session")
def space25() -> ReferenceSpace:
    return ReferenceSpace.bundled(25)


@pytest.fixture(scope="session")
def space50() -> ReferenceSpace:
    return ReferenceSpace.bundled(50)


@pytest.fixture(scope="session")
def space100() -> ReferenceSpace:
    return ReferenceSpace.bundled(100)
