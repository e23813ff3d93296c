"""Tests of keras_congeal.ops.upsampling: x2 upsampling + convolution as one
sub-pixel convolution."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_congeal.ops.upsampling import upsample_conv
from tests.conftest import gradient


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def numpy_upsample_conv(x, kernel, bias):
    """Nearest x2 upsampling then a 'same' cross-correlation, in float64 NumPy."""
    up = np.repeat(np.repeat(x.astype("float64"), 2, axis=1), 2, axis=2)
    k = kernel.shape[0]
    r = k // 2
    padded = np.pad(up, ((0, 0), (r, r), (r, r), (0, 0)))
    out = np.zeros((*up.shape[:3], kernel.shape[3]))
    for dy in range(k):
        for dx in range(k):
            window = padded[:, dy : dy + up.shape[1], dx : dx + up.shape[2], :]
            out += window @ kernel[dy, dx].astype("float64")
    return out + bias


@pytest.mark.parametrize("kernel_size", [1, 3, 5, 7])
@pytest.mark.parametrize("size", [(4, 4), (5, 7)])
def test_matches_upsampling_then_convolution(kernel_size, size):
    rng = np.random.default_rng(kernel_size)
    x = rng.normal(size=(2, *size, 3)).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, 3, 5)).astype("float32")
    bias = rng.normal(size=5).astype("float32")
    expected = numpy_upsample_conv(x, kernel, bias)
    np.testing.assert_allclose(_np(upsample_conv(x, kernel, bias)), expected, atol=1e-4)
    np.testing.assert_allclose(_np(upsample_conv(x, kernel)), expected - bias, atol=1e-4)


@pytest.mark.parametrize("kernel_size", [3, 5])
@pytest.mark.parametrize(
    "offset, window", [((2, 2), (28, 28)), ((1, 3), (5, 4)), ((0, 0), (1, 1)), ((31, 30), (1, 2))]
)
def test_window_is_the_crop_of_the_whole_result(kernel_size, offset, window):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 16, 16, 2)).astype("float32")
    kernel = rng.normal(size=(kernel_size, kernel_size, 2, 3)).astype("float32")
    whole = numpy_upsample_conv(x, kernel, 0.0)
    top, left = offset
    expected = whole[:, top : top + window[0], left : left + window[1]]
    got = _np(upsample_conv(x, kernel, output_offset=offset, output_size=window))
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_gradients_equal_those_of_the_keras_layers():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 5, 3)).astype("float32")
    kernel = rng.normal(size=(3, 3, 3, 4)).astype("float32")
    weights = rng.normal(size=(2, 9, 8, 4)).astype("float32")  # a non-uniform loss
    up = keras.layers.UpSampling2D(2)

    def layers(v, k):
        out = ops.conv(up(v), k, padding="same", data_format="channels_last")
        return out[:, 1:10, 2:10] * weights

    def fused_of_x(v):
        return upsample_conv(v, kernel, output_offset=(1, 2), output_size=(9, 8)) * weights

    np.testing.assert_allclose(
        gradient(fused_of_x, x), gradient(lambda v: layers(v, kernel), x), atol=1e-4
    )

    def fused_of_kernel(k):
        return upsample_conv(x, k, output_offset=(1, 2), output_size=(9, 8)) * weights

    grad = gradient(fused_of_kernel, kernel)
    np.testing.assert_allclose(grad, gradient(lambda k: layers(x, k), kernel), atol=1e-3)
    assert np.abs(grad).max() > 1.0


def test_bad_arguments_raise():
    x = np.zeros((1, 4, 4, 2), "float32")
    with pytest.raises(ValueError, match="odd size"):
        upsample_conv(x, np.zeros((2, 2, 2, 3), "float32"))
    with pytest.raises(ValueError, match="rank 4"):
        upsample_conv(x[0], np.zeros((3, 3, 2, 3), "float32"))
    with pytest.raises(ValueError, match="output window"):
        upsample_conv(
            x, np.zeros((3, 3, 2, 3), "float32"), output_offset=(2, 0), output_size=(7, 8)
        )
