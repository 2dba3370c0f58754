"""The made reference template kept on disk: the same bits as making it, made again whenever an input changes."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest

from brainmap.atlas import ReferenceSpace, StructureTree, template, template_cache
from brainmap.atlas.template_cache import KEEP_PER_RESOLUTION, cached_make_template, template_key


@pytest.fixture(scope="module")
def small(space100) -> ReferenceSpace:
    """A 40 x 40 x 40 crop of the 100 um annotation (cerebellum and brainstem; Fortran-ordered, as pynrrd reads)."""
    crop = np.asfortranarray(space100.annotation[85:125, 5:45, 10:50])
    assert np.unique(crop).size > 20
    return ReferenceSpace(space100.structure_tree, crop, 100.0)


def _no_making(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("make_template was called: the cached file was not read")

    monkeypatch.setattr(template, "make_template", refuse)


def test_the_cached_template_is_the_made_one_bit_for_bit_and_is_read_back(small, tmp_path, monkeypatch, same_bits):
    made = template.make_template(small, seed=0)
    first = cached_make_template(small, seed=0, folder=tmp_path)
    files = list(tmp_path.glob("made_template_100um_*.npy"))
    assert len(files) == 1 and same_bits(first, made)
    _no_making(monkeypatch)
    again = cached_make_template(small, seed=0, folder=tmp_path)
    assert same_bits(again, made) and again.flags.f_contiguous == made.flags.f_contiguous


def test_a_changed_voxel_seed_or_structure_name_is_another_template(small, space100):
    key = template_key(small, seed=0)
    assert template_key(small, seed=0) == key
    assert template_key(small, seed=1) != key
    annotation = small.annotation.copy(order="F")
    annotation[20, 20, 20] = 0 if annotation[20, 20, 20] else 997
    assert template_key(ReferenceSpace(small.structure_tree, annotation, 100.0)) != key
    assert template_key(ReferenceSpace(small.structure_tree, np.ascontiguousarray(small.annotation), 100.0)) != key
    assert template_key(ReferenceSpace(small.structure_tree, small.annotation, 50.0)) != key
    nodes = [dict(node) for node in small.structure_tree.nodes()]
    node = next(n for n in nodes if n["acronym"] == "CBX")
    node["name"] = node["name"] + ", layer 1"
    assert template_key(ReferenceSpace(StructureTree(nodes), small.annotation, 100.0)) != key


@pytest.mark.parametrize("damage", ["truncated", "other shape", "not numpy"])
def test_a_damaged_cache_file_is_made_again_and_replaced(small, tmp_path, same_bits, damage, caplog):
    made = cached_make_template(small, seed=0, folder=tmp_path)
    (path,) = tmp_path.glob("made_template_100um_*.npy")
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "other shape":
        np.save(path, np.zeros((4, 4, 4), dtype=np.float32))
    else:
        path.write_text("not a numpy file\n")
    with caplog.at_level(logging.WARNING, logger=template_cache.__name__):
        again = cached_make_template(small, seed=0, folder=tmp_path)
    assert same_bits(again, made)
    assert str(path) in caplog.text and "making it again" in caplog.text
    assert same_bits(np.load(path), made)  # replaced


def test_a_folder_that_cannot_be_written_gives_the_template_uncached(small, tmp_path, same_bits):
    blocked = tmp_path / "a file"
    blocked.write_text("in the way of the folder")
    volume = cached_make_template(small, seed=0, folder=blocked / "templates")
    assert same_bits(volume, template.make_template(small, seed=0))
    assert blocked.read_text() == "in the way of the folder"


def test_only_the_most_recently_used_templates_of_a_resolution_are_kept(small, tmp_path):
    for seed in range(KEEP_PER_RESOLUTION + 2):
        cached_make_template(small, seed=seed, folder=tmp_path)
    (tmp_path / "average_template_100.nrrd").write_text("Allen's, kept")
    kept = {p.name for p in tmp_path.glob("made_template_100um_*.npy")}
    assert len(kept) == KEEP_PER_RESOLUTION
    assert f"made_template_100um_{template_key(small, KEEP_PER_RESOLUTION + 1)[:32]}.npy" in kept
    assert f"made_template_100um_{template_key(small, 0)[:32]}.npy" not in kept
    # reading one marks it used: it outlives the next new one
    oldest = min(tmp_path.glob("made_template_100um_*.npy"), key=lambda p: p.stat().st_mtime)
    os.utime(oldest, (1, 1))
    seed_of = {f"made_template_100um_{template_key(small, s)[:32]}.npy": s for s in range(KEEP_PER_RESOLUTION + 2)}
    cached_make_template(small, seed=seed_of[oldest.name], folder=tmp_path)
    cached_make_template(small, seed=KEEP_PER_RESOLUTION + 2, folder=tmp_path)
    assert oldest.exists() and (tmp_path / "average_template_100.nrrd").exists()


def test_no_home_folder_gives_the_template_uncached(small, monkeypatch, same_bits):
    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv(template_cache.TEMPLATE_DIR_ENV, raising=False)
    monkeypatch.setattr(template_cache.Path, "home", staticmethod(no_home))
    assert same_bits(cached_make_template(small, seed=0), template.make_template(small, seed=0))
