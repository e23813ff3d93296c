"""Antialiased resizing in the aligner's normalised frame, with `keras.ops` only.

The transform parameters live in normalised coordinates whose -1 and +1 are
the centres of the corner pixels, so a resize that keeps that frame maps
output pixel `i` to input position `i (N_in - 1) / (N_out - 1)` (the
"align corners" map). Point-sampling that map (bilinear `align_corners=True`)
aliases when it shrinks: a 1000-pixel photo shrunk to 64 pixels keeps one
pixel in sixteen and the fine texture folds into false patterns. Here every
output pixel is a weighted mean of the input pixels around its position,
with a triangle (tent) filter whose half-width is the shrink factor
`s = (N_in - 1) / (N_out - 1)`: the low-pass filter that
`tf.image.resize(..., antialias=True)` and Pillow apply when reducing, with
the align-corners centres. Weights are renormalised to sum to one (at the
borders part of the tent falls outside the image).

* Shrinking by `s`: a tent of half-width `s` (its transfer function at the
  output's Nyquist frequency is `sinc^2(1/2)` = 0.41 and decays as `1/f^2`
  beyond it).
* Same size: the identity, exactly.
* Enlarging: `s < 1`, the half-width stays 1: plain bilinear interpolation
  with the align-corners map.

The filter is separable: a `(N_out, N_in)` weight matrix per axis, applied by
two matrix products (ONNX `MatMul`, any opset), built from the input's size
even when that size is only known at run time (the `--any-size` ONNX export
traces these functions with dynamic shapes).
"""

from keras import ops

__all__ = ["resize_weights", "resize_antialiased"]


def resize_weights(in_size, out_size):
    """The `(out_size, in_size)` weights of the antialiased align-corners resize.

    Args:
        in_size: int, or a scalar integer tensor (a dynamic size). At least 1.
        out_size: int. At least 2.

    Returns:
        float32 tensor; each row sums to one.
    """
    if int(out_size) < 2:
        raise ValueError(f"Expected out_size >= 2, received {out_size}.")
    in_f = ops.cast(in_size, "float32")
    scale = (in_f - 1.0) / float(int(out_size) - 1)
    support = ops.maximum(scale, 1.0)
    centres = ops.arange(int(out_size), dtype="float32") * scale
    positions = ops.cast(ops.arange(in_size), "float32")
    distance = ops.abs(ops.expand_dims(positions, 0) - ops.expand_dims(centres, 1)) / support
    weights = ops.relu(1.0 - distance)
    return weights / ops.sum(weights, axis=1, keepdims=True)


def resize_antialiased(images, size):
    """Resizes `images` (B, H, W, C) to `size` = (height, width), antialiased.

    Keeps the normalised frame (corner pixel centres on corner pixel centres);
    see the module docstring for the filter. `H` and `W` may be dynamic.

    Returns:
        float32 tensor (B, height, width, C).
    """
    shape = ops.shape(images)
    rows = resize_weights(shape[1], size[0])  # (h, H)
    cols = resize_weights(shape[2], size[1])  # (w, W)
    channels_first = ops.transpose(ops.cast(images, "float32"), (0, 3, 1, 2))  # (B, C, H, W)
    out = ops.matmul(ops.matmul(rows, channels_first), ops.transpose(cols))  # (B, C, h, w)
    return ops.transpose(out, (0, 2, 3, 1))
