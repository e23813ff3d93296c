import keras
import numpy as np
import pytest

from keras_congeal.layers import BilinearSampler
from keras_congeal.ops import geometry, warp
from tests.conftest import gradient


@pytest.mark.parametrize("transform", ["translation", "similarity", "affine", "homography"])
def test_zero_params_return_input_exactly(transform):
    images = np.random.default_rng(0).random((2, 9, 11, 3)).astype("float32")
    params = np.zeros((2, geometry.num_params(transform)), "float32")
    out = keras.ops.convert_to_numpy(BilinearSampler(transform)([images, params]))
    np.testing.assert_array_equal(out, images)


def test_one_pixel_translation_in_normalised_params():
    image = np.arange(1, 13, dtype="float32").reshape(1, 3, 4, 1)
    params = np.array([[2 / 3, 0.0]], "float32")  # 2 / (W - 1): one pixel right
    out = keras.ops.convert_to_numpy(BilinearSampler("translation")([image, params]))
    expected = np.array([[2, 3, 4, 0], [6, 7, 8, 0], [10, 11, 12, 0]], "float32")
    np.testing.assert_allclose(out[0, ..., 0], expected, atol=1e-5)


def test_output_size_and_shape_inference():
    layer = BilinearSampler("affine", output_size=(5, 7))
    assert layer.compute_output_shape(((None, 28, 28, 2), (None, 6))) == (None, 5, 7, 2)
    images = np.random.default_rng(1).random((3, 28, 28, 2)).astype("float32")
    out = layer([images, np.zeros((3, 6), "float32")])
    assert tuple(out.shape) == (3, 5, 7, 2)


def test_same_params_give_same_warp_at_any_resolution():
    # Normalised params are resolution independent: the matrices at 2x size
    # agree with the 1x ones up to the pixel-grid scaling.
    params = np.array([[0.05, -0.1, 0.02, 0.08, 0.03, -0.04]], "float32")
    layer = BilinearSampler("affine")
    small = keras.ops.convert_to_numpy(layer.pixel_matrices(params, (1, 10, 10, 1)))[0]
    large = keras.ops.convert_to_numpy(layer.pixel_matrices(params, (1, 19, 19, 1)))[0]
    scale = np.diag([2.0, 2.0, 1.0])  # (19 - 1) / (10 - 1) = 2
    np.testing.assert_allclose(large, scale @ small @ np.linalg.inv(scale), atol=1e-5)


def test_matches_warp_by_pixel_matrix():
    rng = np.random.default_rng(2)
    images = rng.random((2, 12, 10, 1)).astype("float32")
    params = (rng.normal(size=(2, 8)) * 0.05).astype("float32")
    layer = BilinearSampler("homography")
    out = keras.ops.convert_to_numpy(layer([images, params]))
    ref = keras.ops.convert_to_numpy(warp(images, layer.pixel_matrices(params, images.shape)))
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_gradient_reaches_params():
    rng = np.random.default_rng(3)
    images = rng.random((1, 8, 8, 1)).astype("float32")
    layer = BilinearSampler("translation")
    grad = gradient(lambda p: layer([images, p]) * images, np.full((1, 2), 0.013, "float32"))
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0


def test_config_round_trip_and_errors():
    layer = BilinearSampler("similarity", output_size=(4, 6), name="s")
    clone = BilinearSampler.from_config(layer.get_config())
    assert clone.transform == "similarity" and clone.output_size == (4, 6)
    with pytest.raises(ValueError, match="Unknown transform family"):
        BilinearSampler("rigid")
    with pytest.raises(ValueError, match="rank 4"):
        BilinearSampler("translation")([np.zeros((4, 4, 1), "float32"),
                                        np.zeros((1, 2), "float32")])
