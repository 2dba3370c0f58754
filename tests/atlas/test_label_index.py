"""The label index against brute force: masks and counts on a small tree and on the real 100 um annotation."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.atlas import StructureTree
from brainmap.atlas.label_index import LabelIndex, OntologyOrder
from brainmap.errors import UnknownStructureError


def _toy_tree() -> StructureTree:
    """root(1) -> A(10) -> {A1(11), A2(12)}, B(20) -> B1(2000000021); graph order deliberately not preorder ids."""
    def node(sid, path, order):
        return {"id": sid, "acronym": f"s{sid}", "name": f"structure {sid}", "structure_id_path": path,
                "rgb_triplet": [sid % 255, 0, 0], "graph_order": order, "graph_id": 1, "structure_set_ids": []}
    return StructureTree([
        node(1, [1], 0), node(10, [1, 10], 1), node(11, [1, 10, 11], 2), node(12, [1, 10, 12], 3),
        node(20, [1, 20], 4), node(2000000021, [1, 20, 2000000021], 5),
    ])


def _brute_descendants(tree: StructureTree, sid: int) -> list[int]:
    return [int(n["id"]) for n in tree.nodes() if sid in n["structure_id_path"]]


@pytest.fixture(scope="module")
def toy():
    tree = _toy_tree()
    rng = np.random.default_rng(0)
    annotation = rng.choice(np.array([0, 1, 10, 11, 12, 20, 2000000021], dtype=np.uint32), size=(7, 5, 9))
    return tree, annotation, LabelIndex(annotation, OntologyOrder.from_tree(tree))


def test_preorder_puts_each_subtree_in_one_contiguous_run(toy):
    tree, _, index = toy
    order = index.order
    assert order.ids.tolist() == [1, 10, 11, 12, 20, 2000000021]
    for k, sid in enumerate(order.ids):
        run = set(order.ids[k : k + order.subtree_size[k]].tolist())
        assert run == set(_brute_descendants(tree, int(sid)))


@pytest.mark.parametrize("layout", ["C", "F"])
def test_masks_match_brute_force_in_either_memory_order(toy, layout):
    tree, annotation, _ = toy
    annotation = np.asarray(annotation, order=layout)
    index = LabelIndex(annotation, OntologyOrder.from_tree(tree))
    for sid in [1, 10, 11, 20, 2000000021]:
        expected = np.isin(annotation, _brute_descendants(tree, sid))
        np.testing.assert_array_equal(index.mask([sid]), expected)
        np.testing.assert_array_equal(index.mask([sid], direct_only=True), annotation == sid)
    # Many disjoint ranges take the lookup-table path; the answer must not change.
    ids = [11, 12, 2000000021, 1, 20, 10]
    np.testing.assert_array_equal(index.mask(ids, direct_only=True), np.isin(annotation, ids))


def test_counts_direct_total_and_weighted(toy):
    tree, annotation, index = toy
    direct = index.direct_counts()
    total = index.total_counts()
    for k, sid in enumerate(index.order.ids):
        assert direct[k] == np.count_nonzero(annotation == sid)
        assert total[k] == np.isin(annotation, _brute_descendants(tree, int(sid))).sum()
    weights = np.random.default_rng(1).random(annotation.shape)
    weighted = index.direct_counts(weights=weights)
    for k, sid in enumerate(index.order.ids):
        assert weighted[k] == pytest.approx(weights[annotation == sid].sum())
    left = index.direct_counts(region=(slice(None), slice(None), slice(0, 4)))
    for k, sid in enumerate(index.order.ids):
        assert left[k] == np.count_nonzero(annotation[:, :, :4] == sid)


def test_ancestor_closure_rolls_up_like_prefix_sums(toy):
    _, _, index = toy
    closure = index.order.ancestor_closure()
    direct = index.direct_counts()
    np.testing.assert_array_equal(closure.astype(np.int64) @ direct, index.roll_up(direct))


def test_label_outside_the_ontology_is_named(toy):
    tree, annotation, _ = toy
    bad = annotation.copy()
    bad[0, 0, 0] = 999_999
    with pytest.raises(UnknownStructureError, match="999999"):
        LabelIndex(bad, OntologyOrder.from_tree(tree))


@pytest.mark.parametrize("signed", [False, True])
def test_relabelling_runs_of_labels_matches_a_lookup_and_names_every_unknown_one(toy, signed):
    """Runs of one label (as an annotation holds them) relabel as a plain lookup does; an unknown label or a
    negative one inside a run, at a run's start or right after a known run is still found and named."""
    tree, _, _ = toy
    order = OntologyOrder.from_tree(tree)
    lookup = {0: 0, **{int(sid): k + 1 for k, sid in enumerate(order.ids)}}
    rng = np.random.default_rng(5)
    values = rng.choice(np.array(list(lookup)), size=400)
    runs = np.repeat(values, rng.integers(1, 9, size=400)).astype(np.int64 if signed else np.uint32)
    index = LabelIndex(runs, order)
    assert index.compact.tolist() == [lookup[int(v)] for v in runs]
    for bad_value in ([-7] if signed else []) + [999_999]:
        for where in (0, 5, len(runs) // 2, len(runs) - 1):
            bad = runs.copy()
            bad[where : where + 3] = bad_value  # a run of the unknown label
            with pytest.raises(UnknownStructureError, match=f"structures of the ontology: {bad_value}"):
                LabelIndex(bad, order)
            bad[where + 1 :] = bad[where]  # ... that runs to the end
            with pytest.raises(UnknownStructureError):
                LabelIndex(bad, order)


def test_unknown_structure_in_a_mask_query_is_named(toy):
    _, _, index = toy
    with pytest.raises(UnknownStructureError, match="4242"):
        index.mask([4242])


def test_real_annotation_100um_masks_and_counts_match_brute_force(space100, tree):
    annotation = space100.annotation
    rng = np.random.default_rng(7)
    sample = rng.choice(tree.node_ids(), size=60, replace=False).tolist() + [997, 315, 8]
    for sid in sample:
        descendants = tree.descendant_ids([sid])[0]
        np.testing.assert_array_equal(space100.make_structure_mask([sid]), np.isin(annotation, descendants))
    labels, counts = np.unique(annotation, return_counts=True)
    by_label = dict(zip(labels.tolist(), counts.tolist()))
    total = space100.total_voxel_counts()
    for sid in tree.node_ids():
        expected = sum(by_label.get(d, 0) for d in tree.descendant_ids([sid])[0])
        assert total.loc[sid] == expected
