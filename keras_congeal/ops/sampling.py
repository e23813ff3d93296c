"""Differentiable bilinear sampling with `keras.ops` only.

`keras.ops.image.affine_transform` (and TensorFlow's `ImageProjectiveTransformV3`
under it) passes no gradient to the transform on TensorFlow, and
tensorflow-addons' resampler does not import with Keras 3, so a spatial
transformer needs its own sampler: this one.

Convention (see `keras_congeal.ops.geometry`): pixel coordinates, `x` = column,
`y` = row, pixel centres at integers, origin at the centre of the top-left
pixel; a matrix maps output points to the input points they sample
(`src_from_dst`). Points outside the input read zeros ("zeros" padding): a
point half a pixel beyond the border gets half the border pixel's value. This
equals ONNX/PyTorch `GridSample(mode="bilinear", padding_mode="zeros",
align_corners=True)`.
"""

import contextlib
import contextvars

from keras import ops

from keras_congeal.ops import geometry

__all__ = ["bilinear_sample", "warp", "warp_implementation", "current_warp"]

_WARP = contextvars.ContextVar("keras_congeal_warp", default=None)


@contextlib.contextmanager
def warp_implementation(fn):
    """Within the block, layers warp with `fn` (same signature as `warp`).

    The ONNX exporter uses it to swap in a warp that converts to a single
    `GridSample` op; the default, gather-based `warp` is restored on exit.
    """
    token = _WARP.set(fn)
    try:
        yield
    finally:
        _WARP.reset(token)


def current_warp():
    """The warp function layers should call: `warp` unless swapped."""
    return _WARP.get() or warp


def bilinear_sample(images, x, y):
    """Samples `images` at real-valued pixel coordinates, bilinearly.

    Gradients flow to `images` and to the coordinates (through the
    interpolation weights, which are computed *before* any clipping).

    Args:
        images: tensor (B, H, W, C).
        x: tensor (B, Ho, Wo), column coordinates in the input's pixel frame.
        y: tensor (B, Ho, Wo), row coordinates.

    Returns:
        Tensor (B, Ho, Wo, C). Zero where the point is farther than one pixel
        outside the image; a blend with zero within that band.
    """
    batch = ops.shape(images)[0]
    height, width, channels = images.shape[1], images.shape[2], images.shape[3]
    out_h, out_w = x.shape[1], x.shape[2]

    x0 = ops.floor(x)
    y0 = ops.floor(y)
    wx1 = x - x0
    wy1 = y - y0
    wx0 = 1.0 - wx1
    wy0 = 1.0 - wy1

    flat = ops.reshape(images, (-1, channels))
    base = ops.reshape(ops.arange(batch, dtype="int32") * (height * width), (-1, 1, 1))

    def corner(xc, yc, weight):
        inside = ops.logical_and(
            ops.logical_and(xc >= 0.0, xc <= width - 1.0),
            ops.logical_and(yc >= 0.0, yc <= height - 1.0),
        )
        weight = ops.where(inside, weight, ops.zeros_like(weight))
        xi = ops.cast(ops.clip(xc, 0.0, width - 1.0), "int32")
        yi = ops.cast(ops.clip(yc, 0.0, height - 1.0), "int32")
        index = ops.reshape(base + yi * width + xi, (-1,))
        values = ops.reshape(ops.take(flat, index, axis=0), (-1, out_h, out_w, channels))
        return values * ops.expand_dims(ops.cast(weight, values.dtype), -1)

    return (
        corner(x0, y0, wx0 * wy0)
        + corner(x0 + 1.0, y0, wx1 * wy0)
        + corner(x0, y0 + 1.0, wx0 * wy1)
        + corner(x0 + 1.0, y0 + 1.0, wx1 * wy1)
    )


def warp(images, src_from_dst, output_size=None):
    """Warps images by pixel-coordinate matrices.

    `output[b, y, x] = bilinear(images[b], src_from_dst[b] @ (x, y, 1))`,
    zero outside the input.

    Args:
        images: tensor (B, H, W, C).
        src_from_dst: tensor (B, 3, 3) in pixel coordinates.
        output_size: tuple `(Ho, Wo)`. Defaults to the input size.

    Returns:
        Tensor (B, Ho, Wo, C).
    """
    if len(images.shape) != 4:
        raise ValueError(
            f"Expected `images` of rank 4 (batch, height, width, channels), "
            f"received shape {tuple(images.shape)}."
        )
    if output_size is None:
        output_size = (images.shape[1], images.shape[2])
    gx, gy = geometry.pixel_grid(output_size, dtype=src_from_dst.dtype)
    x, y = geometry.apply_matrix(src_from_dst, gx, gy)
    return bilinear_sample(images, x, y)
