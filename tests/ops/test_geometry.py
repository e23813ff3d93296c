import keras
import numpy as np
import pytest
from keras import ops

from keras_congeal.ops import geometry

FAMILIES = ["translation", "similarity", "affine", "homography"]


def _np(x):
    return keras.ops.convert_to_numpy(x)


@pytest.mark.parametrize("transform", FAMILIES)
def test_zero_params_are_identity(transform):
    params = np.zeros((3, geometry.num_params(transform)), "float32")
    matrix = _np(geometry.params_to_matrix(ops.convert_to_tensor(params), transform))
    np.testing.assert_array_equal(matrix, np.broadcast_to(np.eye(3), (3, 3, 3)))


def test_params_to_matrix_layouts():
    m = _np(geometry.params_to_matrix(np.array([[0.1, 0.2, 0.3, 0.4]], "float32"), "similarity"))
    np.testing.assert_allclose(m[0], [[1.1, -0.2, 0.3], [0.2, 1.1, 0.4], [0, 0, 1]], atol=1e-7)
    p = np.arange(1, 9, dtype="float32")[None] / 10
    m = _np(geometry.params_to_matrix(p, "homography"))
    np.testing.assert_allclose(m[0], [[1.1, 0.2, 0.3], [0.4, 1.5, 0.6], [0.7, 0.8, 1]], atol=1e-7)


@pytest.mark.parametrize("transform", FAMILIES)
def test_params_delta_round_trip(transform):
    rng = np.random.default_rng(0)
    params = (rng.normal(size=(5, geometry.num_params(transform))) * 0.1).astype("float32")
    delta = geometry.params_to_delta(ops.convert_to_tensor(params), transform)
    np.testing.assert_allclose(_np(geometry.delta_to_params(delta, transform)), params, atol=1e-6)


@pytest.mark.parametrize("transform", FAMILIES)
def test_compose_matches_matrix_product(transform):
    rng = np.random.default_rng(1)
    n = geometry.num_params(transform)
    a = (rng.normal(size=(4, n)) * 0.1).astype("float32")
    b = (rng.normal(size=(4, n)) * 0.1).astype("float32")
    composed = geometry.params_to_matrix(geometry.compose_params(a, b, transform), transform)
    expected = _np(geometry.params_to_matrix(a, transform)) @ _np(
        geometry.params_to_matrix(b, transform))
    expected /= expected[:, 2:, 2:]
    np.testing.assert_allclose(_np(composed), expected, atol=1e-5)


def test_unknown_transform_and_bad_params():
    with pytest.raises(ValueError, match="Unknown transform family"):
        geometry.num_params("spline")
    with pytest.raises(ValueError, match=r"shape \(batch, 6\)"):
        geometry.params_to_delta(np.zeros((2, 8), "float32"), "affine")


def test_pixel_matrix_of_a_translation():
    # A normalised x-offset of 2/(W-1) is exactly one pixel.
    width, height = 5, 4
    delta = geometry.params_to_delta(np.array([[2 / (width - 1), 0.0]], "float32"), "translation")
    pixel = _np(geometry.delta_to_pixel_matrix(delta, (height, width), (height, width)))
    np.testing.assert_allclose(pixel[0], [[1, 0, 1], [0, 1, 0], [0, 0, 1]], atol=1e-6)


def test_pixel_normalised_round_trip_with_resizing():
    rng = np.random.default_rng(2)
    params = (rng.normal(size=(3, 8)) * 0.05).astype("float32")
    delta = geometry.params_to_delta(params, "homography")
    pixel = geometry.delta_to_pixel_matrix(delta, (40, 30), (20, 60))
    normalised = _np(geometry.pixel_to_normalized_matrix(pixel, (40, 30), (20, 60)))
    np.testing.assert_allclose(normalised, _np(delta) + np.eye(3), atol=1e-5)
    # The corners of the output map to where the normalised matrix says.
    m = _np(delta[0]) + np.eye(3)
    corner = m @ np.array([1.0, 1.0, 1.0])  # bottom-right, normalised
    x_src, y_src = (corner[:2] / corner[2] + 1) / 2 * np.array([29, 39])
    mapped = _np(pixel[0]) @ np.array([59.0, 19.0, 1.0])
    np.testing.assert_allclose(mapped[:2] / mapped[2], [x_src, y_src], atol=1e-3)


def test_invert_matrix():
    rng = np.random.default_rng(3)
    m = np.eye(3) + rng.normal(size=(6, 3, 3)) * 0.2
    inv = _np(geometry.invert_matrix(m.astype("float32")))
    np.testing.assert_allclose(inv @ m, np.broadcast_to(np.eye(3), m.shape), atol=1e-5)


def test_apply_matrix_and_transform_points_agree():
    rng = np.random.default_rng(4)
    m = (np.eye(3) + rng.normal(size=(2, 3, 3)) * 0.05).astype("float32")
    x, y = geometry.pixel_grid((3, 4))
    gx, gy = geometry.apply_matrix(m, x, y)
    points = np.stack([_np(x).ravel(), _np(y).ravel()], -1)[None].repeat(2, 0)
    mapped = _np(geometry.transform_points(m, points.astype("float32")))
    np.testing.assert_allclose(mapped[..., 0], _np(gx).reshape(2, -1), atol=1e-5)
    np.testing.assert_allclose(mapped[..., 1], _np(gy).reshape(2, -1), atol=1e-5)
    # The homogeneous division is done: compare with explicit NumPy.
    h = m[0] @ np.array([3.0, 2.0, 1.0])
    np.testing.assert_allclose(mapped[0, -1], h[:2] / h[2], atol=1e-5)


def test_perspective_divide_is_clamped():
    m = np.array([[[1, 0, 0], [0, 1, 0], [1, 0, 0]]], "float32")  # w = x
    gx, _ = geometry.apply_matrix(m, ops.zeros((1,)), ops.zeros((1,)))
    assert np.isfinite(_np(gx)).all()


def test_tiny_images_are_rejected():
    with pytest.raises(ValueError, match="at least 2x2"):
        geometry.delta_to_pixel_matrix(np.zeros((1, 3, 3), "float32"), (1, 5), (5, 5))
