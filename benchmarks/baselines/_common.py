"""NumPy helpers shared by the baselines: input checks, a bilinear warp in the
project's convention, the time and memory of a run and the alignment measures.

Convention (the one of `keras_congeal.ops.geometry`): pixel coordinates,
`x` = column, `y` = row, pixel centres at integers; a matrix `src_from_dst`
maps a pixel of the aligned (output) image to the input point it samples, so
warping image `I` by `M` gives `J(p) = I(M p)`. Points outside the input read
zeros, with a bilinear blend to zero in the one-pixel band around the border
(ONNX/PyTorch `GridSample(bilinear, zeros, align_corners=True)`), as the
package's own sampler does.

No Keras here: the baselines run without a Keras backend. The alignment
measures are the package's own (`keras_congeal.metrics` is NumPy only).
"""

import contextlib
import time
import tracemalloc

import numpy as np

from keras_congeal.metrics import apsnr, content_scale, ink_kept

__all__ = [
    "apsnr",
    "ink_kept",
    "content_scale",
    "as_image_stack",
    "infer_data_range",
    "pixel_grid",
    "warp_bilinear",
    "measured_run",
]

# Homographies are evaluated with the perspective divide clamped away from
# zero, as in `keras_congeal.ops.geometry.PERSPECTIVE_EPSILON`.
PERSPECTIVE_EPSILON = 1e-2


def as_image_stack(images, name="images"):
    """Returns `images` as a float64 array (N, H, W), or raises.

    A trailing channel axis of size 1 is dropped.
    """
    array = np.asarray(images)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        raise ValueError(
            f"Expected `{name}` of shape (num_images, height, width) or "
            f"(num_images, height, width, 1), received shape {array.shape}."
        )
    if array.shape[0] == 0:
        raise ValueError(f"`{name}` is empty.")
    if array.shape[1] < 2 or array.shape[2] < 2:
        raise ValueError(f"Images must be at least 2x2 pixels, received {array.shape[1:]}.")
    array = array.astype("float64")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` contains NaN or infinite values.")
    return array


def infer_data_range(images):
    """The value of white: 255 for integer data or for floats above 1, else 1."""
    array = np.asarray(images)
    if np.issubdtype(array.dtype, np.integer):
        return 255.0
    return 255.0 if float(np.max(array, initial=0.0)) > 1.0 else 1.0


def pixel_grid(height, width):
    """Homogeneous pixel coordinates (3, H*W) in row-major order: (x, y, 1)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack(
        [xs.ravel().astype("float64"), ys.ravel().astype("float64"), np.ones(height * width)]
    )


def warp_bilinear(images, src_from_dst, chunk_size=2048):
    """Warps each image by its pixel `src_from_dst` matrix, bilinearly.

    `out[i, y, x] = bilinear(images[i], src_from_dst[i] @ (x, y, 1))`, zero
    outside the input (see the module docstring).

    Args:
        images: array (N, H, W).
        src_from_dst: array (N, 3, 3), or (3, 3) for the same matrix for all.
        chunk_size: int. Images warped at once (bounds the temporaries).

    Returns:
        float64 array (N, H, W).
    """
    images = np.asarray(images, dtype="float64")
    n, height, width = images.shape
    matrices = np.asarray(src_from_dst, dtype="float64")
    if matrices.shape == (3, 3):
        matrices = np.broadcast_to(matrices, (n, 3, 3))
    if matrices.shape != (n, 3, 3):
        raise ValueError(
            f"Expected `src_from_dst` of shape ({n}, 3, 3) or (3, 3), received "
            f"{matrices.shape}."
        )
    grid = pixel_grid(height, width)
    out = np.empty((n, height * width), dtype="float64")
    for start in range(0, n, chunk_size):
        stop = min(n, start + chunk_size)
        out[start:stop] = _warp_chunk(
            images[start:stop].reshape(stop - start, -1), matrices[start:stop], grid,
            height, width,
        )
    return out.reshape(n, height, width)


def _warp_chunk(flat, matrices, grid, height, width):
    points = matrices @ grid  # (B, 3, H*W)
    w = points[:, 2]
    w = np.where(np.abs(w) < PERSPECTIVE_EPSILON,
                 np.where(w < 0, -PERSPECTIVE_EPSILON, PERSPECTIVE_EPSILON), w)
    # Points farther than one pixel outside read zero whatever their exact
    # position: clipping there (and sending non-finite points outside) keeps
    # `floor` and the int cast finite.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        x = points[:, 0] / w
        y = points[:, 1] / w
    x = np.clip(np.where(np.isfinite(x), x, -2.0), -2.0, width + 1.0)
    y = np.clip(np.where(np.isfinite(y), y, -2.0), -2.0, height + 1.0)
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx = x - x0
    fy = y - y0
    out = np.zeros_like(x)
    for dx, dy, weight in (
        (0, 0, (1 - fx) * (1 - fy)),
        (1, 0, fx * (1 - fy)),
        (0, 1, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        xi = x0 + dx
        yi = y0 + dy
        inside = (xi >= 0) & (xi <= width - 1) & (yi >= 0) & (yi <= height - 1)
        index = (np.clip(yi, 0, height - 1) * width + np.clip(xi, 0, width - 1)).astype(np.intp)
        values = np.take_along_axis(flat, index, axis=1)
        out += np.where(inside, weight * values, 0.0)
    return out


@contextlib.contextmanager
def measured_run(trace_memory=False):
    """Measures the block it wraps: yields a dict that holds, once the block
    has finished, `seconds` (wall clock) and `peak_memory_bytes` (the
    `tracemalloc` peak with `trace_memory`, which slows the block; else None).

    Example:

    >>> with measured_run(trace_memory=True) as cost:
    ...     aligned = warp_bilinear(images, matrices)
    >>> cost["seconds"], cost["peak_memory_bytes"]
    """
    cost = {"seconds": None, "peak_memory_bytes": None}
    if trace_memory:
        tracemalloc.start()
    start = time.perf_counter()
    try:
        yield cost
        cost["seconds"] = time.perf_counter() - start
    finally:
        if trace_memory:
            cost["peak_memory_bytes"] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
