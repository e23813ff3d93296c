"""Tests of keras_congeal.ops.resize: the antialiased align-corners resize."""

import keras
import numpy as np
import pytest

from keras_congeal.ops import geometry, resize, sampling


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def test_weights_by_hand():
    # 10 -> 4: centres 0, 3, 6, 9, tent half-width 3, rows normalised.
    expected = np.zeros((4, 10))
    expected[0, :3] = [3, 2, 1]
    expected[1, 1:6] = [1, 2, 3, 2, 1]
    expected[2, 4:9] = [1, 2, 3, 2, 1]
    expected[3, 7:] = [1, 2, 3]
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(_np(resize.resize_weights(10, 4)), expected, atol=1e-6)


def test_same_size_is_the_identity():
    images = np.random.default_rng(0).random((2, 9, 7, 3), dtype=np.float32)
    np.testing.assert_array_equal(_np(resize.resize_antialiased(images, (9, 7))), images)


def test_enlarging_is_align_corners_bilinear():
    images = np.random.default_rng(1).random((2, 6, 5, 1), dtype=np.float32)
    zero = np.zeros((2, 3, 3), "float32")
    expected = _np(sampling.warp(images, geometry.delta_to_pixel_matrix(zero, (6, 5), (11, 13)),
                                 (11, 13)))
    np.testing.assert_allclose(_np(resize.resize_antialiased(images, (11, 13))), expected,
                               atol=1e-6)


def test_shrinking_removes_fine_texture():
    # A checkerboard at the large image's Nyquist frequency: point sampling
    # every 4th pixel reads one colour only; the tent averages it to grey.
    board = (np.indices((37, 37)).sum(axis=0) % 2).astype("float32")[None, ..., None]
    shrunk = _np(resize.resize_antialiased(board, (10, 10)))
    np.testing.assert_allclose(shrunk[:, 1:-1, 1:-1], 0.5, atol=1e-6)
    zero = np.zeros((1, 3, 3), "float32")
    sampled = _np(sampling.warp(board, geometry.delta_to_pixel_matrix(zero, (37, 37), (10, 10)),
                                (10, 10)))
    assert np.allclose(sampled, 0.0, atol=1e-6)  # aliased: all black


def test_constant_images_stay_constant():
    images = np.full((1, 50, 23, 2), 0.3, "float32")
    np.testing.assert_allclose(_np(resize.resize_antialiased(images, (7, 4))), 0.3, atol=1e-6)


def test_rejects_a_one_pixel_output():
    with pytest.raises(ValueError, match="out_size >= 2"):
        resize.resize_weights(5, 1)
