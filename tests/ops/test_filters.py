import numpy as np
import pytest
from keras import ops
from scipy import ndimage

from keras_congeal.ops import filters


def _numpy(x):
    return ops.convert_to_numpy(x).astype("float64")


def _reference_blur(image, sigma):
    """scipy's Gaussian filter with the same radius and zero padding."""
    radius = max(1, int(np.ceil(2.5 * sigma)))
    return ndimage.gaussian_filter(image, sigma, mode="constant", cval=0.0, radius=radius)


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.5])
def test_gaussian_blur_matches_scipy(sigma):
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 13, 17, 3)).astype("float32")
    got = _numpy(filters.gaussian_blur(ops.convert_to_tensor(images), sigma))
    for b in range(2):
        for c in range(3):
            want = _reference_blur(images[b, :, :, c].astype("float64"), sigma)
            np.testing.assert_allclose(got[b, :, :, c], want, atol=1e-5)


def test_gaussian_blur_zero_sigma_is_identity_and_taps_sum_to_one():
    images = np.arange(2 * 5 * 5, dtype="float32").reshape(2, 5, 5, 1)
    np.testing.assert_array_equal(_numpy(filters.gaussian_blur(images, 0)), images)
    np.testing.assert_allclose(filters.gaussian_taps(1.3).sum(), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="sigma > 0"):
        filters.gaussian_taps(0)


def test_local_contrast_matches_a_numpy_reference():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(1, 24, 20, 3)).astype("float32")
    got = _numpy(filters.local_contrast(images, 1.0, 3.0))[0, :, :, 0]
    grey = _reference_blur(images[0].astype("float64").mean(-1), 1.0)
    mean = _reference_blur(grey, 3.0)
    variance = _reference_blur((grey - mean) ** 2, 3.0)
    np.testing.assert_allclose(got, (grey - mean) / np.sqrt(variance + 1e-3), atol=1e-4)


def test_local_contrast_ignores_brightness_and_contrast():
    # A textured image under two illuminations (other gain and offset): with
    # a negligible variance floor the features agree away from the
    # zero-padded border; the default floor keeps flat regions near 0.
    rng = np.random.default_rng(2)
    texture = ndimage.gaussian_filter(rng.uniform(size=(64, 64)), 1.5)
    texture = (texture - texture.min()) / (texture.max() - texture.min())
    dark = (0.1 + 0.5 * texture)[None, :, :, None].astype("float32")
    bright = (0.05 + 0.9 * texture)[None, :, :, None].astype("float32")
    a = _numpy(filters.local_contrast(dark, 1.0, 3.0, epsilon=1e-9))[0, 20:-20, 20:-20, 0]
    b = _numpy(filters.local_contrast(bright, 1.0, 3.0, epsilon=1e-9))[0, 20:-20, 20:-20, 0]
    assert np.abs(dark - bright).mean() > 0.1
    np.testing.assert_allclose(a, b, atol=1e-3 * np.abs(a).max())
    flat = np.full((1, 30, 30, 3), 0.4, "float32")
    flat += np.random.default_rng(3).normal(0, 1e-3, flat.shape).astype("float32")
    assert np.abs(_numpy(filters.local_contrast(flat, 1.0, 3.0))[0, 10:-10, 10:-10]).max() < 0.05
