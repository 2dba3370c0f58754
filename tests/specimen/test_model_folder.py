"""SectionDataSet / SectionImage: validation, geometry (pixel <-> reference), and the on-disk folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from brainmap.errors import FormatError
from brainmap.specimen import folder as folder_module
from brainmap.specimen.folder import (
    DATASET_FILE,
    MissingFileError,
    read_dataset,
    read_section_image,
    update_alignment,
    write_dataset,
)
from brainmap.specimen.model import (
    InvalidDataSetError,
    NotAlignedError,
    NotInDataSetError,
    SectionDataSet,
    SectionImage,
    image_to_specimen,
    iter_image_files,
    nearest_section_images,
    nominal_tvr,
    pixels_to_reference,
    reference_to_pixels,
)
from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d, Alignment3d

WIDTH, HEIGHT = 64, 48


# -- synthetic data sets --------------------------------------------------------------------------------------
def random_alignment2d(rng: np.random.Generator, pixel_size_um: float) -> Alignment2d:
    angle = rng.uniform(-0.2, 0.2)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation @ np.diag(pixel_size_um * rng.uniform(0.9, 1.1, 2))
    return Alignment2d.from_tsv(Affine2d(matrix, rng.uniform(-300, 300, 2)))


def random_alignment3d(rng: np.random.Generator, plane: str) -> Alignment3d:
    wobble = np.eye(3) + rng.normal(scale=0.05, size=(3, 3))
    tvr = Affine3d(nominal_tvr(plane).matrix @ wobble, rng.uniform([4000, 2000, 4000], [7000, 4000, 7000]))
    return Alignment3d.from_tvr(tvr)


def make_dataset(rng: np.random.Generator, plane: str = "coronal", n_sections: int = 6, dataset_id: int = 100,
                 channels: tuple[str, ...] = ("red", "green")) -> SectionDataSet:
    """Coronal: connectivity, 100 um sections every 100 um. Sagittal: ISH, 25 um sections every 200 um
    (section numbers 8 apart, starting at 3)."""
    coronal = plane == "coronal"
    thickness, step, first = (100.0, 1, 0) if coronal else (25.0, 8, 3)
    images = [
        SectionImage(id=dataset_id * 100 + k, section_number=first + k * step, channels=list(channels),
                     width=WIDTH, height=HEIGHT, alignment2d=random_alignment2d(rng, 0.35 if coronal else 1.0))
        for k in range(n_sections)
    ]
    return SectionDataSet(
        id=dataset_id, plane=plane, product="connectivity" if coronal else "ish",
        section_thickness_um=thickness, sampling_um=100.0 if coronal else 200.0,
        pixel_size_um=0.35 if coronal else 1.0, images=images, alignment3d=random_alignment3d(rng, plane),
        metadata={"gene": "Pdyn", "injection_structures": [385], "injection_coordinates_um": [8000.0, 1000.0, 9000.0]},
    )


def make_arrays(dataset: SectionDataSet, rng: np.random.Generator) -> dict[tuple[int, str], np.ndarray]:
    return {(image.id, channel): rng.integers(0, 65536, image.shape, dtype=np.uint16)
            for image, channel, _ in iter_image_files(dataset)}


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


@pytest.fixture
def written(tmp_path, rng):
    dataset = make_dataset(rng)
    arrays = make_arrays(dataset, rng)
    folder = tmp_path / "ds"
    write_dataset(folder, dataset, arrays)
    return folder, dataset, arrays


# -- model validation -----------------------------------------------------------------------------------------
def image_kwargs(**changes):
    kwargs = dict(id=1, section_number=0, channels={"red": "a.tif"}, width=WIDTH, height=HEIGHT)
    kwargs.update(changes)
    return kwargs


def dataset_kwargs(**changes):
    kwargs = dict(id=5, plane="coronal", product="ish", section_thickness_um=25.0, sampling_um=200.0,
                  pixel_size_um=1.0)
    kwargs.update(changes)
    return kwargs


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"plane": "horizontal"}, "plane must be one of 'coronal', 'sagittal'; got 'horizontal'"),
        ({"product": "mri"}, "product must be one of"),
        ({"section_thickness_um": -25.0}, "section_thickness_um must be a positive"),
        ({"pixel_size_um": 0}, "pixel_size_um must be a positive"),
        ({"sampling_um": float("nan")}, "sampling_um must be a positive"),
        ({"sampling_um": 10.0}, "sampling_um .* is smaller than section_thickness_um"),
        ({"id": True}, "id must be an integer"),
        ({"id": "5"}, "id must be an integer"),
        ({"metadata": {1: "x"}}, "metadata must be a mapping with string keys"),
        ({"images": [SectionImage(**image_kwargs()), SectionImage(**image_kwargs(section_number=8))]},
         "two images have id 1"),
        ({"images": [SectionImage(**image_kwargs()), SectionImage(**image_kwargs(id=2, channels={"r": "b.tif"}))]},
         "two images have section_number 0"),
        ({"images": [SectionImage(**image_kwargs()), SectionImage(**image_kwargs(id=2, section_number=8))]},
         "share the file name 'a.tif'"),
        ({"alignment3d": Affine3d.identity()}, "alignment3d must be an Alignment3d"),
    ],
)
def test_dataset_validation(changes, message):
    with pytest.raises(InvalidDataSetError, match=message):
        SectionDataSet(**dataset_kwargs(**changes))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"section_number": -1}, "section_number must be >= 0"),
        ({"width": 0}, "width must be >= 1"),
        ({"height": 2.5}, "height must be an integer"),
        ({"channels": {}}, "channels must be a non-empty mapping"),
        ({"channels": {"red": "../a.tif"}}, "plain .tif/.tiff name"),
        ({"channels": {"red": "sub/a.tif"}}, "plain .tif/.tiff name"),
        ({"channels": {"red": "a.png"}}, "plain .tif/.tiff name"),
        ({"channels": {"re d": "a.tif"}}, "channel name 're d'"),
        ({"channels": {"red": "a.tif", "green": "a.tif"}}, "two channels share a file name"),
        ({"failed": "no"}, "failed must be True or False"),
        ({"alignment2d": Affine2d.identity()}, "alignment2d must be an Alignment2d"),
    ],
)
def test_image_validation(changes, message):
    with pytest.raises(InvalidDataSetError, match=message):
        SectionImage(**image_kwargs(**changes))


def test_channel_list_gets_default_file_names():
    image = SectionImage(**image_kwargs(id=1001, section_number=12, channels=["red", "green"]))
    assert image.channels == {"red": "0012_1001_red.tif", "green": "0012_1001_green.tif"}
    assert image.shape == (HEIGHT, WIDTH)


def test_lookups(rng):
    dataset = make_dataset(rng, "sagittal")
    assert dataset.image(10002).section_number == 19
    assert dataset.image_at_section(19).id == 10002
    assert dataset.section_position_um(19) == 19 * 25.0
    np.testing.assert_array_equal(dataset.section_position_um([3, 11]), [75.0, 275.0])
    with pytest.raises(NotInDataSetError, match="no SectionImage with id 5"):
        dataset.image(5)
    with pytest.raises(NotInDataSetError, match="no SectionImage at section_number 4"):
        dataset.image_at_section(4)


# -- geometry -------------------------------------------------------------------------------------------------
def test_nominal_axes():
    """Coronal: columns along LR, rows along DV, sections along AP; sagittal: columns AP, rows DV, sections LR."""
    for plane, (column_axis, row_axis, cut_axis) in {"coronal": (2, 1, 0), "sagittal": (0, 1, 2)}.items():
        dataset = SectionDataSet(**dataset_kwargs(plane=plane, images=[SectionImage(
            **image_kwargs(section_number=40, alignment2d=Alignment2d.from_tsv(Affine2d(np.eye(2), [0, 0]))))],
            alignment3d=Alignment3d.from_tvr(nominal_tvr(plane))))
        origin, right, down = pixels_to_reference(dataset, 1, [[0, 0], [1, 0], [0, 1]])
        assert origin[cut_axis] == 40 * 25.0
        np.testing.assert_array_equal(right - origin, np.eye(3)[column_axis])
        np.testing.assert_array_equal(down - origin, np.eye(3)[row_axis])


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_pixels_to_reference_composes_tsv_section_position_and_tvr(rng, plane):
    dataset = make_dataset(rng, plane)
    image = dataset.images[2]
    xy = rng.uniform(0, [WIDTH, HEIGHT], (40, 2))
    sxy = np.array([image.alignment2d.tsv.matrix @ p + image.alignment2d.tsv.translation for p in xy])
    specimen = np.c_[sxy, np.full(40, image.section_number * dataset.section_thickness_um)]
    expected = np.array([dataset.alignment3d.tvr.matrix @ s + dataset.alignment3d.tvr.translation for s in specimen])
    np.testing.assert_allclose(image_to_specimen(dataset, image, xy), specimen, rtol=0, atol=1e-9)
    np.testing.assert_allclose(pixels_to_reference(dataset, image, xy), expected, rtol=0, atol=1e-8)
    np.testing.assert_allclose(pixels_to_reference(dataset, image.id, xy[0]), expected[0], rtol=0, atol=1e-8)


@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_pixel_reference_pixel_round_trip(rng, plane):
    for trial in range(5):
        dataset = make_dataset(rng, plane, n_sections=7, dataset_id=100 + trial)
        for index, image in enumerate(dataset.images):
            xy = rng.uniform(-10, [WIDTH + 10, HEIGHT + 10], (25, 2))
            back = reference_to_pixels(dataset, pixels_to_reference(dataset, image, xy))
            assert (back.image_index == index).all()
            assert (back.section_image_id == image.id).all()
            assert (back.section_number == image.section_number).all()
            np.testing.assert_allclose(back.xy, xy, rtol=0, atol=1e-8)
            np.testing.assert_allclose(back.offset_um, 0, atol=1e-8)


def test_nearest_section_skips_failed_and_unaligned_and_breaks_ties_low(rng):
    dataset = make_dataset(rng, "coronal", n_sections=5)  # sections 0..4 at sz = 0, 100, ..., 400 um
    sz = np.array([-50.0, 240.0, 250.0, 260.0, 1000.0])  # below all, near 2, tie 2/3, near 3, above all
    np.testing.assert_array_equal(nearest_section_images(dataset, sz), [0, 2, 2, 3, 4])
    dataset.images[2].failed = True
    dataset.images[3].alignment2d = None
    np.testing.assert_array_equal(nearest_section_images(dataset, sz), [0, 1, 1, 4, 4])
    tvr = dataset.alignment3d.tvr
    found = reference_to_pixels(dataset, tvr.apply([[10.0, 20.0, 240.0], [10.0, 20.0, 270.0]]))
    assert list(found.section_number) == [1, 4]
    np.testing.assert_allclose(found.offset_um, [140.0, -130.0], atol=1e-8)


def test_geometry_errors(rng):
    dataset = make_dataset(rng)
    other = make_dataset(rng, dataset_id=200)
    with pytest.raises(NotInDataSetError):
        pixels_to_reference(dataset, other.images[0], [0, 0])
    moved = dataclasses.replace(dataset.images[0], section_number=99)
    with pytest.raises(NotInDataSetError, match="is at section 99"):
        pixels_to_reference(dataset, moved, [0, 0])
    with pytest.raises(ValueError, match="shape"):
        pixels_to_reference(dataset, dataset.images[0], [0, 0, 0])
    unaligned = dataclasses.replace(dataset.images[0], alignment2d=None)
    with pytest.raises(NotAlignedError, match="has no Alignment2d"):
        pixels_to_reference(dataset, unaligned, [0, 0])
    for image in dataset.images:
        image.failed = True
    with pytest.raises(NotAlignedError, match="no usable section"):
        reference_to_pixels(dataset, [5000, 3000, 5000])
    dataset.alignment3d = None
    with pytest.raises(NotAlignedError, match="has no Alignment3d"):
        pixels_to_reference(dataset, dataset.images[0], [0, 0])


# -- the folder -----------------------------------------------------------------------------------------------
def test_write_then_read_is_identical(written):
    folder, dataset, arrays = written
    assert sorted(p.name for p in folder.iterdir()) == ["dataset.json", "images"]
    assert not [p for p in (folder / "images").iterdir() if p.name.startswith(".")]  # no temporary files left
    back = read_dataset(folder)
    assert back == dataset  # every field, the transforms exactly (floats stored at full precision)
    for image, channel, _ in iter_image_files(back):
        pixels = read_section_image(folder, image, channel)
        assert pixels.dtype == np.uint16 and pixels.shape == (HEIGHT, WIDTH)
        np.testing.assert_array_equal(pixels, arrays[(image.id, channel)])


def test_dataset_json_is_documented_shape(written):
    folder, dataset, _ = written
    doc = json.loads((folder / DATASET_FILE).read_text())
    assert doc["schema_version"] == 1
    assert doc["alignment3d"] == dataset.alignment3d.to_allen()
    first = doc["images"][0]
    assert set(first) == {"id", "section_number", "width", "height", "failed", "channels", "alignment2d"}
    assert set(first["alignment2d"]) == {f"{p}_{k:02d}" for p in ("tsv", "tvs") for k in range(6)}
    assert first["channels"] == {"red": "0000_10000_red.tif", "green": "0000_10000_green.tif"}


def test_write_from_an_iterator_and_unaligned_sagittal(tmp_path, rng):
    dataset = make_dataset(rng, "sagittal", n_sections=3, channels=("ish",))
    dataset.alignment3d = None
    dataset.images[1].alignment2d = None
    dataset.images[2].failed = True
    arrays = [rng.integers(0, 4096, (HEIGHT, WIDTH)).astype(np.int64) for _ in range(3)]  # converted to uint16
    write_dataset(tmp_path / "s", dataset, iter(arrays))
    back = read_dataset(tmp_path / "s")
    assert back == dataset
    for image, array in zip(back.images, arrays):
        np.testing.assert_array_equal(read_section_image(tmp_path / "s", image, "ish"), array)


def test_metadata_numpy_values_are_stored_as_json(tmp_path, rng):
    dataset = make_dataset(rng, n_sections=1, channels=("red",))
    dataset.metadata = {"injection_volume": np.float64(0.25), "coordinates": np.array([1, 2, 3])}
    write_dataset(tmp_path / "d", dataset, make_arrays(dataset, rng))
    assert read_dataset(tmp_path / "d").metadata == {"injection_volume": 0.25, "coordinates": [1, 2, 3]}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda arrays: arrays.pop(next(iter(arrays))), r"missing \[\(10000, 'red'\)\]"),
        (lambda arrays: arrays.update({(1, "red"): np.zeros((HEIGHT, WIDTH), np.uint16)}), r"unknown \[\(1, 'red'\)\]"),
        (lambda arrays: arrays.update({(10001, "red"): np.zeros((HEIGHT, WIDTH - 1), np.uint16)}),
         r"channel 'red': the array has shape \(48, 63\), expected \(height, width\) = \(48, 64\)"),
        (lambda arrays: arrays.update({(10001, "red"): np.zeros((HEIGHT, WIDTH), np.float32)}),
         "expected an integer array .* got float32"),
        (lambda arrays: arrays.update({(10001, "red"): np.full((HEIGHT, WIDTH), 70000)}), "do not fit in uint16"),
        (lambda arrays: arrays.update({(10001, "red"): np.full((HEIGHT, WIDTH), -1)}), "do not fit in uint16"),
    ],
)
def test_write_refuses_bad_arrays_and_leaves_no_dataset_json(tmp_path, rng, mutate, message):
    dataset = make_dataset(rng, n_sections=3)
    arrays = make_arrays(dataset, rng)
    mutate(arrays)
    with pytest.raises(InvalidDataSetError, match=message):
        write_dataset(tmp_path / "d", dataset, arrays)
    assert not (tmp_path / "d" / DATASET_FILE).exists()


def test_write_refuses_wrong_number_of_iterated_arrays(tmp_path, rng):
    dataset = make_dataset(rng, n_sections=2)  # 4 files
    arrays = list(make_arrays(dataset, rng).values())
    with pytest.raises(InvalidDataSetError, match="3 image arrays were given, 4 expected"):
        write_dataset(tmp_path / "a", dataset, iter(arrays[:3]))
    with pytest.raises(InvalidDataSetError, match="more image arrays were given than the 4 expected"):
        write_dataset(tmp_path / "b", dataset, arrays + arrays[:1])
    assert not (tmp_path / "a" / DATASET_FILE).exists() and not (tmp_path / "b" / DATASET_FILE).exists()


def test_unstorable_metadata_is_refused_before_writing(tmp_path, rng):
    dataset = make_dataset(rng, n_sections=1)
    dataset.metadata = {"when": object()}
    with pytest.raises(InvalidDataSetError, match="metadata cannot be stored as JSON"):
        write_dataset(tmp_path / "d", dataset, make_arrays(dataset, rng))
    assert not (tmp_path / "d").exists()


def test_existing_dataset_needs_overwrite(written, rng):
    folder, dataset, _ = written
    with pytest.raises(FileExistsError, match="already holds a data set"):
        write_dataset(folder, dataset, make_arrays(dataset, rng))
    replacement = make_dataset(rng, n_sections=2, dataset_id=300)
    arrays = make_arrays(replacement, rng)
    write_dataset(folder, replacement, arrays, overwrite=True)
    assert read_dataset(folder) == replacement


def test_update_alignment(written, rng):
    folder, dataset, _ = written
    new2d = random_alignment2d(rng, 0.35)
    new3d = random_alignment3d(rng, "coronal")
    updated = update_alignment(folder, {dataset.images[1].id: new2d, dataset.images[2].id: None}, new3d)
    back = read_dataset(folder)
    assert back == updated
    assert back.images[1].alignment2d == new2d and back.images[2].alignment2d is None
    assert back.alignment3d == new3d
    assert back.images[0].alignment2d == dataset.images[0].alignment2d
    assert update_alignment(folder, alignment3d=None).alignment3d == new3d  # None keeps it


def test_update_alignment_with_unknown_image_changes_nothing(written, rng):
    folder, _, _ = written
    before = (folder / DATASET_FILE).read_bytes()
    with pytest.raises(NotInDataSetError, match="no SectionImage with id 123"):
        update_alignment(folder, {123: random_alignment2d(rng, 1.0)})
    assert (folder / DATASET_FILE).read_bytes() == before


def test_unknown_channel(written):
    folder, dataset, _ = written
    with pytest.raises(NotInDataSetError, match="has no channel 'blue'; it has 'red', 'green'"):
        read_section_image(folder, dataset.images[0], "blue")


# -- reading bad folders --------------------------------------------------------------------------------------
def edit_json(folder: Path, edit) -> None:
    path = folder / DATASET_FILE
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def test_missing_folder_and_dataset_json(tmp_path, written):
    with pytest.raises(MissingFileError, match="no such data set folder"):
        read_dataset(tmp_path / "nowhere")
    folder, _, _ = written
    (folder / DATASET_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"dataset\.json: missing; .* is not a brainmap data set folder"):
        read_dataset(folder)


def test_invalid_json(written):
    folder, _, _ = written
    (folder / DATASET_FILE).write_text("{not json")
    with pytest.raises(FormatError, match=r"dataset\.json: not valid JSON"):
        read_dataset(folder)


def first_image(doc):
    return doc["images"][0]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=2), "schema_version: unknown schema_version 2 .this brainmap reads 1"),
        (lambda d: d.pop("schema_version"), "schema_version: missing"),
        (lambda d: d.pop("plane"), "plane: missing"),
        (lambda d: d.update(plane="oblique"), "plane must be one of"),
        (lambda d: d.update(pixel_size_um="0.35"), "pixel_size_um: expected a finite number"),
        (lambda d: d.update(images={}), "images: expected a JSON array"),
        (lambda d: first_image(d).pop("width"), r"images\[0\] \(id 10000\)\.width: missing"),
        (lambda d: first_image(d).update(section_number=1.5),
         r"images\[0\] \(id 10000\)\.section_number: expected an integer"),
        (lambda d: first_image(d).update(width=0), r"images\[0\] \(id 10000\): .*width must be >= 1"),
        (lambda d: first_image(d)["alignment2d"].pop("tsv_03"),
         r"images\[0\] \(id 10000\)\.alignment2d: .*missing parameter\(s\) tsv_03"),
        (lambda d: first_image(d)["alignment2d"].update(tvs_05="x"), r"alignment2d: .*tvs_05='x' is not a number"),
        (lambda d: first_image(d)["alignment2d"].update(tvs_00=first_image(d)["alignment2d"]["tvs_00"] * 1.01),
         r"alignment2d: tvs is not the inverse of tsv"),
        (lambda d: d["alignment3d"].pop("trv_11"), r"alignment3d: .*missing parameter\(s\) trv_11"),
        (lambda d: d["alignment3d"].update(tvr_10=d["alignment3d"]["tvr_10"] + 5),
         r"alignment3d: trv is not the inverse"),
    ],
)
def test_bad_dataset_json(written, edit, message):
    folder, _, _ = written
    edit_json(folder, edit)
    with pytest.raises(FormatError, match=message) as info:
        read_dataset(folder)
    assert str(folder / DATASET_FILE) in str(info.value)


def test_non_finite_parameter_in_json(written):
    folder, _, _ = written
    path = folder / DATASET_FILE
    doc = json.loads(path.read_text())
    value = doc["alignment3d"]["tvr_04"]
    path.write_text(path.read_text().replace(json.dumps(value), "NaN", 1))
    with pytest.raises(FormatError, match=r"alignment3d: .*non-finite parameter\(s\) tvr_04=nan"):
        read_dataset(folder)


def test_missing_image_file(written):
    folder, dataset, _ = written
    (folder / "images" / dataset.images[3].channels["green"]).unlink()
    with pytest.raises(MissingFileError, match=r"0003_10003_green\.tif \(SectionImage 10003, channel 'green'\): "
                                               "the image file is missing"):
        read_dataset(folder)
    read_dataset(folder, check_files=False)  # the metadata alone is fine
    with pytest.raises(FileNotFoundError):
        read_section_image(folder, dataset.images[3], "green")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((HEIGHT, WIDTH + 1), np.uint16), r"the image is \(48, 65\) pixels \(rows, cols\), but dataset\.json "
                                                   "says height 48, width 64"),
        (np.zeros((HEIGHT, WIDTH), np.uint8), r"expected 16-bit unsigned pixels \(uint16\), got uint8"),
    ],
)
def test_image_file_inconsistent_with_dataset_json(written, array, message):
    folder, dataset, _ = written
    image = dataset.images[1]
    folder_module._tifffile().imwrite(folder / "images" / image.channels["red"], array)
    with pytest.raises(FormatError, match=message):
        read_dataset(folder)
    with pytest.raises(FormatError, match=message):
        read_section_image(folder, image, "red")


def test_damaged_image_file(written):
    folder, dataset, _ = written
    (folder / "images" / dataset.images[0].channels["red"]).write_bytes(b"not a tiff at all")
    with pytest.raises(FormatError, match="not a readable TIFF"):
        read_dataset(folder)


def _count_tiff_opens(monkeypatch):
    import tifffile

    opened = []
    real = tifffile.TiffFile

    def counting(path, *args, **kwargs):
        opened.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", counting)
    return opened


def test_image_file_replaced_after_a_first_read(written, monkeypatch):
    """A header found good is not parsed again while the file is unchanged; a file replaced (a new file renamed
    over it) or rewritten in place after that first read is checked again and its fault found."""
    folder, dataset, _ = written
    monkeypatch.setattr(folder_module, "_GOOD_HEADERS", {})
    monkeypatch.setattr(folder_module, "_SETTLED_S", 0.0)  # the files were just written: take them as settled
    opened = _count_tiff_opens(monkeypatch)
    read_dataset(folder)
    n_files = len(opened)
    assert n_files == sum(len(image.channels) for image in dataset.images)
    read_dataset(folder)
    assert len(opened) == n_files  # unchanged files: no header parsed again
    image = dataset.images[2]
    path = folder / "images" / image.channels["red"]
    replacement = folder / "replacement.tif"
    folder_module._tifffile().imwrite(replacement, np.zeros((HEIGHT, WIDTH + 1), np.uint16))
    replacement.replace(path)  # a new file (inode) under the same name
    with pytest.raises(FormatError, match=r"the image is \(48, 65\) pixels"):
        read_dataset(folder)
    assert opened[n_files:] == [path.name]  # only the changed file was parsed again
    with pytest.raises(FormatError, match=r"the image is \(48, 65\) pixels"):
        read_dataset(folder)  # a bad file is never remembered as good

    monkeypatch.setattr(folder_module, "_SETTLED_S", 2.0)  # as in use: a file changed < 2 s ago is checked again
    folder_module._GOOD_HEADERS.clear()
    folder_module._tifffile().imwrite(path, np.zeros((HEIGHT, WIDTH), np.uint16))
    read_dataset(folder)  # good again, but just written: not remembered
    assert not any(key.startswith(str(path)) for key in folder_module._GOOD_HEADERS)
    with open(path, "r+b") as fh:  # rewritten in place, the same size and (maybe) the same timestamps
        fh.write(b"not a tiff")
    with pytest.raises(FormatError, match="not a readable TIFF"):
        read_dataset(folder)
    path.unlink()
    with pytest.raises(MissingFileError, match="the image file is missing"):
        read_dataset(folder)
    path.mkdir()  # a folder where the file was
    with pytest.raises(MissingFileError, match="the image file is missing"):
        read_dataset(folder)


def test_images_are_deflated_strips_every_reader_inflates(tmp_path, rng):
    """Large images go out in several ~256 KB strips deflated by ISA-L: tifffile and Pillow (a reader brainmap
    does not use) read the very pixels back; the header is tifffile's own for such an image."""
    from PIL import Image
    import tifffile

    for shape in [(700, 500), (1, 3), (9, 131073)]:  # 2 strips (last one short), one pixel row, one row per strip
        array = rng.integers(0, 65536, shape).astype(np.uint16)
        array[: shape[0] // 2] //= 64  # partly compressible
        path = tmp_path / f"{shape[0]}x{shape[1]}.tif"
        folder_module._write_tiff(path, array)
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            assert page.compression == 8 and page.dtype == np.uint16 and page.shape == shape
            assert len(page.dataoffsets) == -(-shape[0] // max(1, min(shape[0], 262144 // (2 * shape[1]))))
            np.testing.assert_array_equal(page.asarray(), array)
        with Image.open(path) as image:
            np.testing.assert_array_equal(np.asarray(image).astype(np.uint16), array)
        reference = tmp_path / "reference.tif"  # tifffile compressing the same pixels itself: the same layout
        tifffile.imwrite(reference, array, photometric="minisblack", compression="zlib", metadata=None)
        with tifffile.TiffFile(reference) as ours, tifffile.TiffFile(path) as theirs:
            keep = {256, 257, 258, 259, 262, 277, 278}
            assert ({t.code: t.value for t in ours.pages[0].tags.values() if t.code in keep}
                    == {t.code: t.value for t in theirs.pages[0].tags.values() if t.code in keep})


def test_images_are_made_durable_before_dataset_json(tmp_path, rng, monkeypatch):
    """The images are not fsync'ed one by one; all of them are, together, before dataset.json is written."""
    events = []
    real_fsync = folder_module.fsync_paths

    def fsync_paths(files, directories=()):
        files = list(files)
        events.append(("fsync", sorted(p.name for p in files), [Path(d).name for d in directories]))
        real_fsync(files, directories)

    real_atomic = folder_module.atomic_write

    def atomic_write(path, *args, **kwargs):
        events.append(("write", Path(path).name, kwargs.get("durable", True)))
        return real_atomic(path, *args, **kwargs)

    monkeypatch.setattr(folder_module, "fsync_paths", fsync_paths)
    monkeypatch.setattr(folder_module, "atomic_write", atomic_write)
    dataset = make_dataset(rng, n_sections=2)
    write_dataset(tmp_path / "d", dataset, make_arrays(dataset, rng))
    names = sorted(f for _, _, f in iter_image_files(dataset))
    assert events == [*(("write", name, False) for name in (f for _, _, f in iter_image_files(dataset))),
                      ("fsync", names, ["images"]), ("write", DATASET_FILE, True)]
