"""Differentiable image filters with `keras.ops` only: Gaussian blur and the
local-contrast features the face distortion compares.

Images are channels-last `(batch, height, width, channels)`. Borders are
zero-padded (`padding="same"`), like the sampler's "zeros" padding.
"""

import numpy as np
from keras import ops

__all__ = ["gaussian_taps", "gaussian_blur", "local_contrast"]


def gaussian_taps(sigma):
    """The normalised 1-D Gaussian kernel of `sigma` pixels, radius
    `ceil(2.5 sigma)` (at least 1), as float32 NumPy."""
    if sigma <= 0:
        raise ValueError(f"Expected sigma > 0, received {sigma}.")
    radius = max(1, int(np.ceil(2.5 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return (taps / taps.sum()).astype("float32")


def gaussian_blur(images, sigma):
    """Separable Gaussian blur of `sigma` pixels per channel (identity for 0)."""
    if not sigma:
        return images
    taps = gaussian_taps(sigma)
    channels = images.shape[-1]
    kernel_x = np.tile(taps[None, :, None, None], (1, 1, channels, 1))
    kernel_y = np.tile(taps[:, None, None, None], (1, 1, channels, 1))
    images = ops.depthwise_conv(images, ops.cast(kernel_x, images.dtype), padding="same")
    return ops.depthwise_conv(images, ops.cast(kernel_y, images.dtype), padding="same")


def local_contrast(images, sigma, window_sigma, epsilon=1e-3):
    """Local contrast normalisation of the grey level, one channel.

    `g = blur(grey(images), sigma)`, then `(g - mu) / sqrt(var + epsilon)`
    with `mu` and `var` the Gaussian-weighted local mean and variance of `g`
    over `window_sigma` pixels. The result no longer depends on the local
    brightness and contrast (illumination, skin tone, exposure), only on the
    local structure (eyes, brows, nose, mouth), which is what faces have in
    common.

    Args:
        images: tensor (B, H, W, C), values in [0, 1].
        sigma: float. Pre-blur in pixels (0: none): the scale of the structure.
        window_sigma: float > 0. Size of the normalisation window in pixels.
        epsilon: float. Variance floor: flat regions (a blank background)
            stay near 0 instead of amplifying noise.

    Returns:
        tensor (B, H, W, 1).
    """
    grey = gaussian_blur(ops.mean(images, axis=-1, keepdims=True), sigma)
    mean = gaussian_blur(grey, window_sigma)
    variance = gaussian_blur(ops.square(grey - mean), window_sigma)
    return (grey - mean) / ops.sqrt(variance + epsilon)
