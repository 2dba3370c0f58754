"""Affine2d / Affine3d and Allen's Alignment2d / Alignment3d parameter layouts."""

from __future__ import annotations

import numpy as np
import pytest

from brainmap.specimen.transforms import Affine2d, Affine3d, Alignment2d, Alignment3d, TransformError

ATOL = 1e-9


def random_affine(cls, rng):
    n = cls.NDIM
    matrix = rng.normal(size=(n, n)) + 3 * np.eye(n)  # well conditioned
    return cls(matrix, rng.uniform(-1000, 1000, n))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.mark.parametrize("cls", [Affine2d, Affine3d])
class TestAffine:
    def test_apply_is_matrix_times_point_plus_translation(self, cls, rng):
        a = random_affine(cls, rng)
        points = rng.uniform(-100, 100, (50, cls.NDIM))
        expected = np.array([a.matrix @ p + a.translation for p in points])
        np.testing.assert_allclose(a.apply(points), expected, rtol=0, atol=ATOL)
        np.testing.assert_allclose(a(points[0]), expected[0], rtol=0, atol=ATOL)  # a single point
        assert a.apply(points[0]).shape == (cls.NDIM,)
        assert a.apply(points.reshape(5, 10, cls.NDIM)).shape == (5, 10, cls.NDIM)

    def test_apply_refuses_wrong_shapes(self, cls, rng):
        with pytest.raises(TransformError, match="shape"):
            random_affine(cls, rng).apply(np.zeros((4, cls.NDIM + 1)))

    def test_inverse_round_trips(self, cls, rng):
        for _ in range(20):
            a = random_affine(cls, rng)
            points = rng.uniform(-5000, 5000, (100, cls.NDIM))
            np.testing.assert_allclose(a.inverse().apply(a.apply(points)), points, rtol=0, atol=1e-8)
            np.testing.assert_allclose(a.apply(a.inverse().apply(points)), points, rtol=0, atol=1e-8)

    def test_compose_applies_the_right_operand_first(self, cls, rng):
        a, b = random_affine(cls, rng), random_affine(cls, rng)
        points = rng.uniform(-100, 100, (30, cls.NDIM))
        np.testing.assert_allclose(a.compose(b).apply(points), a.apply(b.apply(points)), rtol=1e-12, atol=ATOL)
        assert (a @ b) == a.compose(b)
        assert (a @ a.inverse()).is_close(cls.identity(), atol=1e-12)

    def test_homogeneous_matrix_round_trip(self, cls, rng):
        a = random_affine(cls, rng)
        m = a.to_matrix()
        n = cls.NDIM
        assert m.shape == (n + 1, n + 1)
        np.testing.assert_array_equal(m[n], np.eye(n + 1)[n])
        assert cls.from_matrix(m) == a
        assert cls.from_matrix(m[:n]) == a  # (n, n+1) form
        points = rng.uniform(-10, 10, (7, n))
        homogeneous = np.c_[points, np.ones(7)] @ m.T
        np.testing.assert_allclose(homogeneous[:, :n], a.apply(points), rtol=0, atol=ATOL)

    def test_from_matrix_refuses_bad_matrices(self, cls):
        n = cls.NDIM
        bad_last_row = np.eye(n + 1)
        bad_last_row[n, 0] = 0.5
        with pytest.raises(TransformError, match="last row"):
            cls.from_matrix(bad_last_row)
        with pytest.raises(TransformError, match="shape"):
            cls.from_matrix(np.eye(n + 2))

    def test_allen_params_round_trip_exactly(self, cls, rng):
        a = random_affine(cls, rng)
        params = a.to_allen("tvr")
        count = cls.NDIM * cls.NDIM + cls.NDIM
        assert list(params) == [f"tvr_{k:02d}" for k in range(count)]
        assert all(type(v) is float for v in params.values())
        assert cls.from_allen(params, "tvr") == a
        assert cls.from_allen(list(params.values())) == a
        assert cls.from_allen(a.to_allen_params()) == a
        assert cls.from_allen({**params, "id": 7, "other_00": "x"}, "tvr") == a  # a whole record is fine

    def test_frozen_and_copied(self, cls, rng):
        matrix = np.eye(cls.NDIM)
        a = cls(matrix, np.zeros(cls.NDIM))
        matrix[0, 0] = 5.0  # the caller's array changing does not change the transform
        assert a.matrix[0, 0] == 1.0
        with pytest.raises(ValueError):
            a.matrix[0, 0] = 2.0
        with pytest.raises(AttributeError):
            a.matrix = np.eye(cls.NDIM)  # type: ignore[misc]
        assert hash(a) == hash(cls.identity()) and a == cls.identity()

    def test_singular_matrix_has_no_inverse(self, cls):
        matrix = np.ones((cls.NDIM, cls.NDIM))
        with pytest.raises(TransformError, match="singular"):
            cls(matrix, np.zeros(cls.NDIM)).inverse()

    def test_bad_construction(self, cls):
        n = cls.NDIM
        with pytest.raises(TransformError, match="shape"):
            cls(np.eye(n + 1), np.zeros(n))
        with pytest.raises(TransformError, match="finite"):
            cls(np.full((n, n), np.nan), np.zeros(n))


def test_allen_2d_layout_is_row_major_with_translation_last():
    a = Affine2d.from_allen({f"tsv_{k:02d}": float(k + 1) for k in range(6)}, "tsv")
    np.testing.assert_array_equal(a.matrix, [[1, 2], [3, 4]])
    np.testing.assert_array_equal(a.translation, [5, 6])
    # x' = tsv_00 x + tsv_01 y + tsv_04, y' = tsv_02 x + tsv_03 y + tsv_05
    np.testing.assert_array_equal(a.apply([10, 100]), [1 * 10 + 2 * 100 + 5, 3 * 10 + 4 * 100 + 6])


def test_allen_3d_layout_is_row_major_with_translation_last():
    a = Affine3d.from_allen({f"tvr_{k:02d}": float(k) for k in range(12)}, "tvr")
    np.testing.assert_array_equal(a.matrix, [[0, 1, 2], [3, 4, 5], [6, 7, 8]])
    np.testing.assert_array_equal(a.translation, [9, 10, 11])
    np.testing.assert_array_equal(a.apply([1, 0, 0]), [0 + 9, 3 + 10, 6 + 11])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({f"tsv_{k:02d}": 1.0 for k in range(5)}, "missing parameter.*tsv_05"),
        ({**{f"tsv_{k:02d}": 1.0 for k in range(6)}, "tsv_02": None}, "missing parameter.*tsv_02"),
        ({**{f"tsv_{k:02d}": 1.0 for k in range(6)}, "tsv_03": float("nan")}, "non-finite.*tsv_03"),
        ({**{f"tsv_{k:02d}": 1.0 for k in range(6)}, "tsv_04": float("inf")}, "non-finite.*tsv_04"),
        ({**{f"tsv_{k:02d}": 1.0 for k in range(6)}, "tsv_01": "abc"}, "tsv_01.*not a number"),
        ({**{f"tsv_{k:02d}": 1.0 for k in range(6)}, "tsv_01": True}, "tsv_01.*not a number"),
    ],
)
def test_from_allen_names_the_bad_parameter(params, message):
    with pytest.raises(TransformError, match=message):
        Affine2d.from_allen(params, "tsv")


def test_from_allen_sequence_errors():
    with pytest.raises(TransformError, match="expected 12 parameters, got 11"):
        Affine3d.from_allen([1.0] * 11)
    with pytest.raises(TransformError, match="prefix"):
        Affine3d.from_allen({"trv_00": 1.0})


def test_numeric_strings_are_accepted():
    """Allen's XML/CSV answers carry numbers as text."""
    a = Affine2d.from_allen({f"tvs_{k:02d}": str(k + 1.5) for k in range(6)}, "tvs")
    np.testing.assert_array_equal(a.to_allen_params(), np.arange(6) + 1.5)


class TestAlignments:
    def test_alignment2d_round_trips_through_allen_params(self, rng):
        alignment = Alignment2d.from_tsv(random_affine(Affine2d, rng))
        params = alignment.to_allen()
        assert sorted(params) == sorted([f"tsv_{k:02d}" for k in range(6)] + [f"tvs_{k:02d}" for k in range(6)])
        assert Alignment2d.from_allen(params) == alignment

    def test_alignment3d_round_trips_through_allen_params(self, rng):
        alignment = Alignment3d.from_tvr(random_affine(Affine3d, rng))
        params = alignment.to_allen()
        assert len(params) == 24
        assert Alignment3d.from_allen(params) == alignment
        points = rng.uniform(0, 10000, (20, 3))
        np.testing.assert_allclose(alignment.trv.apply(alignment.tvr.apply(points)), points, rtol=0, atol=1e-8)

    def test_pairs_that_are_not_inverses_are_refused(self, rng):
        tsv = random_affine(Affine2d, rng)
        with pytest.raises(TransformError, match="tvs is not the inverse of tsv"):
            Alignment2d(tsv, tsv)
        tvr = random_affine(Affine3d, rng)
        wrong = Affine3d(tvr.inverse().matrix, tvr.inverse().translation + [0.0, 0.5, 0.0])
        with pytest.raises(TransformError, match="trv is not the inverse of tvr"):
            Alignment3d(wrong, tvr)

    def test_float32_rounded_pairs_are_accepted(self, rng):
        """Allen's database stores the parameters as 32-bit floats; the consistency check allows for that."""
        tvr = Affine3d(np.diag([1.02, 0.97, 1.01]) @ np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]]),
                       [5234.5, 3120.25, 5710.0])
        exact = Alignment3d.from_tvr(tvr).to_allen()
        rounded = {k: float(np.float32(v)) for k, v in exact.items()}
        Alignment3d.from_allen(rounded)  # no error

    def test_alignment_fields_must_be_affines_of_the_right_dimension(self, rng):
        with pytest.raises(TransformError, match="Affine2d"):
            Alignment2d(random_affine(Affine3d, rng), random_affine(Affine3d, rng))  # type: ignore[arg-type]
