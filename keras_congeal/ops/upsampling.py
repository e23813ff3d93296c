"""Nearest-neighbour x2 upsampling then a convolution, in one sub-pixel convolution.

`upsample_conv(x, kernel)` equals `conv(repeat(repeat(x, 2, rows), 2, columns),
kernel, padding="same")` (Keras' `UpSampling2D(2)` then `Conv2D(padding="same")`)
without building the upsampled map: every output pixel `(2i + a, 2j + b)` sees
the upsampled map through the kernel's `k x k` taps, which fall on only
`L x L` distinct input pixels (`L = 2` for `k = 3`) around `(i, j)`; the taps
on the same input pixel are summed into one. The four phases `(a, b)` are
four `L x L` kernels, stacked on the output channels of one convolution of the
small map; its output is then interleaved (depth to space) into the large one.

For `k = 3` that is 4 taps instead of 9 per output pixel over the small map:
2.25x fewer multiply-adds than the convolution of the upsampled map, for the
same result (up to float rounding) and gradients. With `output_offset` and
`output_size`, only a window of the result is computed (the penalised
auto-encoder's decoder crops its map back to the image size).
"""

import numpy as np
from keras import ops

__all__ = ["upsample_conv"]


def _phase_taps(kernel_size):
    """How a kernel of odd size `k` over the x2 upsampled axis reads the
    small axis.

    Returns:
        `(taps, start)`: `taps` (2, L, k), 0/1, `taps[a, t, d]` = 1 where
        kernel tap `d` of an output at `2i + a` reads input `i + start[a] + t`;
        `start` the first input offset of each phase.
    """
    radius = (kernel_size - 1) // 2
    offsets = [[(a + d) // 2 for d in range(-radius, radius + 1)] for a in (0, 1)]
    start = [min(o) for o in offsets]
    length = max(max(o) - s + 1 for o, s in zip(offsets, start, strict=True))
    taps = np.zeros((2, length, kernel_size), "float32")
    for a in (0, 1):
        for d, offset in enumerate(offsets[a]):
            taps[a, offset - start[a], d] = 1.0
    return taps, start


def upsample_conv(x, kernel, bias=None, output_offset=(0, 0), output_size=None):
    """Nearest-neighbour x2 upsampling then a stride-1 `"same"` convolution.

    Args:
        x: tensor (B, H, W, C).
        kernel: tensor (k, k, C, F), k odd: a Keras `Conv2D` kernel.
        bias: optional tensor (F,).
        output_offset: `(top, left)` of the window of the (2H, 2W) result to
            return. Defaults to `(0, 0)`.
        output_size: `(height, width)` of that window, inside the result.
            Defaults to the rest of the result from `output_offset`.

    Returns:
        Tensor (B, height, width, F): `conv(upsampled x, kernel) + bias` over
        the window, no activation.
    """
    if len(x.shape) != 4 or len(kernel.shape) != 4:
        raise ValueError(
            f"Expected `x` of rank 4 and `kernel` of rank 4, received shapes "
            f"{tuple(x.shape)} and {tuple(kernel.shape)}."
        )
    kernel_size = kernel.shape[0]
    if kernel_size % 2 == 0 or kernel.shape[1] != kernel_size:
        raise ValueError(
            f"Expected a square kernel of odd size, received shape {tuple(kernel.shape)}."
        )
    height, width = x.shape[1], x.shape[2]
    channels, filters = kernel.shape[2], kernel.shape[3]
    top, left = output_offset
    out_h, out_w = output_size or (2 * height - top, 2 * width - left)
    if (
        top < 0
        or left < 0
        or top + out_h > 2 * height
        or left + out_w > 2 * width
        or out_h < 1
        or out_w < 1
    ):
        raise ValueError(
            f"Invalid output window: offset {output_offset}, size "
            f"{output_size}, inside a {2 * height}x{2 * width} result."
        )
    taps, start = _phase_taps(kernel_size)
    length = taps.shape[1]
    # With the phases in the order (1, 0) when phase 1 reads one input later
    # than phase 0, output `2i + a` is interleaved position `2p + a' - shift`
    # with `p = i + shift * a` the convolution's position: the depth to space
    # of the convolution's output is the upsampled result shifted by `shift`.
    shift = start[1] - start[0]
    if shift:
        taps = taps[::-1]
    # (L, L, C, 2, 2, F): one L x L kernel per phase (a, b).
    taps = ops.convert_to_tensor(taps, dtype=kernel.dtype)
    phase_kernels = ops.einsum("asd,bte,decf->stcabf", taps, taps, kernel)
    phase_kernels = ops.reshape(phase_kernels, (length, length, channels, 4 * filters))
    # Convolution positions (one per input pixel, plus `shift`) that cover
    # the window, and the input rows and columns they read, with zeros
    # beyond the input as the upsampled map would have.
    first = [(top + shift) // 2, (left + shift) // 2]
    last = [(top + out_h - 1 + shift) // 2, (left + out_w - 1 + shift) // 2]
    reads = [(f + start[0], e + start[0] + length - 1) for f, e in zip(first, last, strict=True)]
    window = _read_window(x, reads)
    y = ops.conv(window, phase_kernels, strides=1, padding="valid", data_format="channels_last")
    if bias is not None:
        y = y + ops.tile(bias, (4,))
    rows, cols = last[0] - first[0] + 1, last[1] - first[1] + 1
    y = ops.reshape(y, (-1, rows, cols, 2, 2, filters))
    y = ops.reshape(ops.transpose(y, (0, 1, 3, 2, 4, 5)), (-1, 2 * rows, 2 * cols, filters))
    row0 = top + shift - 2 * first[0]
    col0 = left + shift - 2 * first[1]
    return _crop(y, (row0, col0), (out_h, out_w))


def _crop(x, offset, size):
    """`x[:, top:top + height, left:left + width]` by `ops.slice` (on
    TensorFlow its gradient is a pad; a strided slice's is many times
    slower on CPUs), or `x` itself when that is all of it."""
    if tuple(offset) == (0, 0) and tuple(size) == tuple(x.shape[1:3]):
        return x
    return ops.slice(x, (0, *offset, 0), (ops.shape(x)[0], *size, x.shape[3]))


def _read_window(x, reads):
    """Rows `reads[0]` and columns `reads[1]` (inclusive `(first, last)`,
    possibly outside the image) of `x`, zeros outside."""
    size = x.shape[1:3]
    inside = [(max(lo, 0), min(hi, n - 1)) for (lo, hi), n in zip(reads, size, strict=True)]
    x = _crop(x, [lo for lo, _ in inside], [hi - lo + 1 for lo, hi in inside])
    pads = [(max(-lo, 0), max(hi - (n - 1), 0)) for (lo, hi), n in zip(reads, size, strict=True)]
    if any(any(p) for p in pads):
        x = ops.pad(x, ((0, 0), *pads, (0, 0)))
    return x
