import keras
import numpy as np
import pytest
from skimage.transform import ProjectiveTransform
from skimage.transform import warp as skimage_warp

from keras_congeal.ops import bilinear_sample, geometry, warp
from tests.conftest import finite_difference, float64_backend, gradient


def _np(x):
    return keras.ops.convert_to_numpy(x)


def smooth_image(height, width, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype("float64")
    out = np.zeros((height, width, channels))
    for c in range(channels):
        fx, fy, phase = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2), rng.uniform(0, 6)
        out[..., c] = 0.5 + 0.5 * np.sin(fx * x + phase) * np.cos(fy * y)
    return out.astype("float32")


def test_identity_returns_input_exactly():
    images = np.random.default_rng(0).random((2, 7, 9, 3)).astype("float32")
    out = _np(warp(images, np.broadcast_to(np.eye(3, dtype="float32"), (2, 3, 3))))
    np.testing.assert_array_equal(out, images)


def test_one_pixel_translation_matches_hand_written_array():
    image = np.arange(1, 13, dtype="float32").reshape(1, 3, 4, 1)
    # src_from_dst = +1 px in x: output(x, y) = input(x + 1, y), zeros beyond.
    matrix = np.array([[[1, 0, 1], [0, 1, 0], [0, 0, 1]]], "float32")
    expected = np.array([[2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]], "float32")
    np.testing.assert_array_equal(_np(warp(image, matrix))[0, ..., 0], expected)


def test_half_pixel_outside_blends_with_zero():
    image = np.ones((1, 2, 2, 1), "float32")
    x = np.array([[[1.5, -0.25, 0.5]]], "float32")
    y = np.zeros_like(x)
    out = _np(bilinear_sample(image, x, y))[0, 0, :, 0]
    np.testing.assert_allclose(out, [0.5, 0.75, 1.0], atol=1e-7)


def test_output_size_differs_from_input():
    images = np.random.default_rng(1).random((1, 10, 10, 1)).astype("float32")
    # Sample every second pixel: a 5x5 output.
    matrix = np.array([[[2, 0, 0], [0, 2, 0], [0, 0, 1]]], "float32")
    out = _np(warp(images, matrix, output_size=(5, 5)))
    np.testing.assert_array_equal(out, images[:, ::2, ::2])


def test_warp_then_inverse_returns_interior():
    image = smooth_image(32, 32, 2)[None]
    m = np.array([[[1.05, 0.1, -1.0], [-0.08, 0.95, 1.5], [0.001, -0.0015, 1.0]]], "float32")
    there = warp(image, m)
    back = _np(warp(there, geometry.invert_matrix(m)))
    interior = (slice(None), slice(8, 24), slice(8, 24))
    np.testing.assert_allclose(back[interior], image[interior], atol=0.02)


@pytest.mark.parametrize("kind", ["affine", "projective"])
def test_agrees_with_scikit_image(kind):
    rng = np.random.default_rng(2)
    image = rng.random((20, 24)).astype("float32")
    spread = np.array([[0.1, 0.1, 1.5], [0.1, 0.1, 1.5], [0, 0, 0]])
    m = np.eye(3) + rng.normal(size=(3, 3)) * spread
    if kind == "projective":
        m[2, :2] = rng.normal(size=2) * 0.004
    ours = _np(warp(image[None, ..., None], m[None].astype("float32")))[0, ..., 0]
    # skimage: (col, row) coordinates, pixel centres at integers, inverse_map
    # maps output to input points: the same convention as ours.
    theirs = skimage_warp(image.astype("float64"), ProjectiveTransform(matrix=m), order=1,
                          mode="constant", cval=0.0, preserve_range=True)
    # Compare where the sampled point lies inside the image (the border band,
    # where the two pad differently, is excluded).
    x, y = np.meshgrid(np.arange(24.0), np.arange(20.0))
    src = m @ np.stack([x.ravel(), y.ravel(), np.ones(x.size)])
    sx, sy = (src[:2] / src[2]).reshape(2, 20, 24)
    inside = (sx >= 0) & (sx <= 23) & (sy >= 0) & (sy <= 19)
    assert inside.sum() > 200
    np.testing.assert_allclose(ours[inside], theirs[inside], atol=1e-5)


def test_gradients_match_finite_differences():
    rng = np.random.default_rng(3)
    image = rng.random((1, 6, 7, 2))
    weights = rng.normal(size=(1, 5, 5, 2))
    # No sampled point may fall on an integer (a kink of bilinear interpolation).
    base = np.array([[[1.0213, 0.0517, 0.7131], [-0.0412, 0.9737, 0.3119], [0.0021, -0.0033, 1.0]]])

    def loss_of_matrix(m):
        return warp(keras.ops.convert_to_tensor(image), m, output_size=(5, 5)) * weights

    def loss_of_image(img):
        return warp(img, keras.ops.convert_to_tensor(base), output_size=(5, 5)) * weights

    with float64_backend():
        grad_m = gradient(loss_of_matrix, base)
        grad_i = gradient(loss_of_image, image)
        fd_m = finite_difference(loss_of_matrix, base)
        fd_i = finite_difference(loss_of_image, image)
    assert np.abs(grad_m).max() > 1e-3  # the transform does receive gradient
    np.testing.assert_allclose(grad_m, fd_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad_i, fd_i, rtol=1e-5, atol=1e-6)


def test_rank_is_checked():
    with pytest.raises(ValueError, match="rank 4"):
        warp(np.zeros((5, 5, 1), "float32"), np.eye(3, dtype="float32")[None])
