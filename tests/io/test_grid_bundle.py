"""Allen grid-data zip bundles: round trip of an ISH expression grid and every kind of broken bundle."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from brainmap.errors import FormatError
from brainmap.io import grid_bundle_bytes, read_grid_bundle, read_metaimage, write_grid_bundle

ISH_SHAPE = (67, 41, 58)  # (AP, DV, LR) at 200 um


def grid(seed: int) -> np.ndarray:
    """A float32 expression grid with -1 (no data) outside the sampled sections."""
    rng = np.random.default_rng(seed)
    values = rng.gamma(0.5, 3.0, ISH_SHAPE).astype(np.float32)
    values[:4] = -1
    values[60:] = -1
    values[:, :, 55:] = -1
    return values


@pytest.fixture()
def volumes() -> dict[str, np.ndarray]:
    energy = grid(0)
    density = np.where(energy >= 0, np.clip(energy / 10, 0, 1), -1).astype(np.float32)
    intensity = np.where(energy >= 0, energy * 40, -1).astype(np.float32)
    return {"energy": energy, "density": density, "intensity": intensity}


@pytest.fixture()
def bundle(tmp_path, volumes) -> Path:
    path = tmp_path / "grid_69782969.zip"
    write_grid_bundle(path, volumes)
    return path


def test_round_trip(bundle, volumes):
    with zipfile.ZipFile(bundle) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"{name}{ext}" for name in volumes for ext in (".mhd", ".raw")
        )
        assert archive.read("energy.mhd").decode().endswith("ElementType = MET_FLOAT\nElementDataFile = energy.raw\n")
        assert len(archive.read("energy.raw")) == 67 * 41 * 58 * 4
    read = read_grid_bundle(bundle)
    assert list(read) == ["energy", "density", "intensity"]
    for name, expected in volumes.items():
        data, header = read[name]
        assert data.shape == ISH_SHAPE and data.dtype == np.float32
        np.testing.assert_array_equal(data, expected)
        assert header.element_spacing == (200.0, 200.0, 200.0) and header.dim_size == ISH_SHAPE
        assert (data == -1).sum() == (expected == -1).sum() > 0


def test_members_are_ordinary_metaimages(bundle, volumes, tmp_path):
    """Unzipped, each volume reads with the plain MetaImage reader."""
    out = tmp_path / "unzipped"
    with zipfile.ZipFile(bundle) as archive:
        archive.extractall(out)
    np.testing.assert_array_equal(read_metaimage(out / "density.mhd")[0], volumes["density"])


def test_include_picks_volumes_in_order(bundle, volumes):
    read = read_grid_bundle(bundle, include=["intensity", "energy"])
    assert list(read) == ["intensity", "energy"]
    np.testing.assert_array_equal(read["intensity"][0], volumes["intensity"])
    assert list(read_grid_bundle(bundle, include="density")) == ["density"]


def test_bytes_and_file_objects(bundle, volumes):
    content = bundle.read_bytes()
    from_bytes = read_grid_bundle(content)
    np.testing.assert_array_equal(from_bytes["energy"][0], volumes["energy"])
    with open(bundle, "rb") as fh:
        np.testing.assert_array_equal(read_grid_bundle(fh)["density"][0], volumes["density"])


def test_bundles_are_deterministic(bundle, volumes):
    assert grid_bundle_bytes(volumes) == bundle.read_bytes() == grid_bundle_bytes(volumes)


def test_fast_deflate_is_a_deflated_zip_any_reader_reads(volumes, tmp_path):
    """``fast`` (ISA-L's deflate, the 25 um channel volumes): members deflated, CRCs right (zipfile's testzip, the
    stdlib's inflate), the volumes the same, the bytes deterministic, and not zlib's own output."""
    fast = grid_bundle_bytes(volumes, fast=True)
    assert fast == grid_bundle_bytes(volumes, fast=True) != grid_bundle_bytes(volumes)
    with zipfile.ZipFile(io.BytesIO(fast)) as archive:
        assert archive.testzip() is None
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}
        assert archive.getinfo("energy.raw").compress_size < archive.getinfo("energy.raw").file_size
    for name, (data, _) in read_grid_bundle(fast).items():
        np.testing.assert_array_equal(data, volumes[name])
    path = tmp_path / "fast.zip"
    write_grid_bundle(path, volumes, fast=True)
    assert path.read_bytes() == fast


def test_members_in_a_folder_and_other_files_are_tolerated(volumes):
    source = zipfile.ZipFile(io.BytesIO(grid_bundle_bytes({"injection": volumes["energy"]})))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("data_set.xml", "<section-data-set/>")
        for name in source.namelist():
            archive.writestr(f"100141219/{name}", source.read(name))
    read = read_grid_bundle(buffer.getvalue())
    assert list(read) == ["injection"]
    np.testing.assert_array_equal(read["injection"][0], volumes["energy"])


def test_other_dtypes_and_spacing(tmp_path):
    mask = np.zeros((13, 8, 11), np.uint8)
    mask[3, 4, 5] = 1
    density = np.linspace(0, 1, 13 * 8 * 11).reshape(13, 8, 11)
    path = tmp_path / "projection.zip"
    write_grid_bundle(path, {"injection_fraction": mask, "projection_density": density}, spacing=100)
    read = read_grid_bundle(path)
    assert read["injection_fraction"][1].element_type == "MET_UCHAR"
    assert read["projection_density"][1].element_type == "MET_DOUBLE"
    assert read["projection_density"][1].element_spacing == (100.0, 100.0, 100.0)
    np.testing.assert_array_equal(read["injection_fraction"][0], mask)
    np.testing.assert_array_equal(read["projection_density"][0], density)


# ------------------------------------------------------------------------------------------- broken bundles


def rezip(path: Path, replace: dict[str, bytes | None]) -> None:
    """Rewrite the bundle with some members replaced (or dropped, for None)."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name, content in replace.items():
        if content is None:
            members.pop(name)
        else:
            members[name] = content
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def assert_format_error(source, *fragments: str, include=None) -> str:
    with pytest.raises(FormatError) as caught:
        read_grid_bundle(source, include=include)
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize("content", [b"", b"this is not a zip", b"PK\x03\x04" + bytes(100)])
def test_not_a_zip(tmp_path, content):
    path = tmp_path / "grid.zip"
    path.write_bytes(content)
    assert_format_error(path, str(path), "not a zip")
    assert_format_error(content, "<grid bundle bytes>", "not a zip")


def test_mhd_without_its_raw(bundle):
    rezip(bundle, {"density.raw": None})
    assert_format_error(bundle, str(bundle), "density.mhd", "'density.raw'", "not in the bundle")
    # The other volumes are still readable on their own.
    assert list(read_grid_bundle(bundle, include=["energy"])) == ["energy"]


def test_raw_of_the_wrong_size(bundle):
    with zipfile.ZipFile(bundle) as archive:
        raw = archive.read("energy.raw")
    rezip(bundle, {"energy.raw": raw[:-8]})
    assert_format_error(bundle, str(bundle), "energy.mhd", "energy.raw", "shorter", "637,304")
    rezip(bundle, {"energy.raw": raw + raw[:4]})
    assert_format_error(bundle, str(bundle), "energy.raw", "longer")


def test_requested_volume_absent(bundle):
    message = assert_format_error(bundle, str(bundle), "'injection'", "injection.mhd", include=["energy", "injection"])
    assert "energy, density, intensity" in message


def test_bad_header_in_bundle(bundle):
    rezip(bundle, {"intensity.mhd": b"ObjectType = Image\nNDims = 3\nDimSize = 67 41\nElementType = MET_FLOAT\n"
                                    b"ElementDataFile = intensity.raw\n"})
    assert_format_error(bundle, str(bundle), "intensity.mhd", "NDims = 3")


def test_corrupt_member(bundle):
    content = bytearray(bundle.read_bytes())
    with zipfile.ZipFile(bundle) as archive:
        info = archive.getinfo("energy.raw")
    start = info.header_offset + 30 + len(info.filename) + 100
    content[start : start + 50] = bytes(50)
    bundle.write_bytes(bytes(content))
    assert_format_error(bundle, str(bundle), "energy.raw", "cannot be read", include=["energy"])


def test_missing_bundle_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.zip"):
        read_grid_bundle(tmp_path / "absent.zip")


def test_bad_volume_names_and_empty_bundles(tmp_path):
    path = tmp_path / "grid.zip"
    for name in ("", "a/b", "..", "x\\y"):
        with pytest.raises(ValueError, match="volume name"):
            write_grid_bundle(path, {name: np.zeros((2, 2, 2), np.float32)})
    with pytest.raises(ValueError, match="no volumes"):
        write_grid_bundle(path, {})
    assert not path.exists()


def test_any_layout_or_byte_order_writes_the_same_file(volumes, tmp_path):
    """A volume given in Fortran order is written from its own memory (no copy), any other layout or byte order
    through a copy: the file is the same bytes whichever it was, and a read-only or strided view is not changed."""
    energy = volumes["energy"]
    want = grid_bundle_bytes({"energy": np.ascontiguousarray(energy)})
    strided = np.zeros((energy.shape[0] * 2, *energy.shape[1:]), np.float32)
    strided[::2] = energy
    frozen = np.asfortranarray(energy)
    frozen.flags.writeable = False
    for given in (np.asfortranarray(energy), frozen, strided[::2], energy.astype(">f4"),
                  np.asfortranarray(energy).transpose(1, 0, 2).transpose(1, 0, 2)):
        path = tmp_path / "layout.zip"
        write_grid_bundle(path, {"energy": given})
        assert path.read_bytes() == want == grid_bundle_bytes({"energy": given})
        assert grid_bundle_bytes({"energy": given}, fast=True) == grid_bundle_bytes({"energy": energy}, fast=True)
    np.testing.assert_array_equal(strided[::2], energy)
