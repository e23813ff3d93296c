"""Synthetic misalignment protocols of the paper: perturbed MNIST, affNIST-like
and infiMNIST-like digits.

Convention (that of `keras_congeal.ops.geometry`): pixel coordinates, `x` the
column and `y` the row, pixel centres at integers; every returned matrix `P`
is `src_from_dst`: `output(p) = source(P p)`, sampled bilinearly by
`keras_congeal.ops.warp` (zeros outside the source). `oracle_align(output, P)`
therefore returns the source (where the perturbation did not crop it).

Every function works through its input in chunks of `chunk_size` images, so
memory stays bounded whatever the number of images. The `iter_*` forms yield
one `(images, matrices)` chunk at a time, to be written straight into a
`np.lib.format.open_memmap` array or an HDF5 dataset. Random numbers are drawn
from one stream, a fixed number per image, so the output does not depend on
`chunk_size`; passing a `np.random.Generator` as `seed` continues its stream
across calls.

Images are (N, H, W) or (N, H, W, C). Integer images come back rounded and
clipped to their dtype (uint8 in, uint8 out); float images keep their dtype.
"""

import functools
import inspect

import numpy as np
from keras import ops

from keras_congeal.data import _PERTURB_NAMES
from keras_congeal.ops import bilinear_sample, pixel_grid, warp

# The names are listed once, in the package, which knows them without importing Keras.
__all__ = list(_PERTURB_NAMES)

CHUNK_SIZE = 4096
AFFNIST_PADDING = 6
# Ink is kept this many pixels away from the border of the affNIST-like frame,
# so that the bilinear footprint of every ink pixel stays inside the frame too.
_AFFNIST_MARGIN = 2.0


# === Helpers ===


def _check_images(images, chunk_size):
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) not in (3, 4) or shape[1] < 2 or shape[2] < 2:
        raise ValueError(
            "Expected `images` of shape (N, H, W) or (N, H, W, C) with H, W >= 2, "
            f"received shape {None if shape is None else tuple(shape)}."
        )
    if chunk_size < 1:
        raise ValueError(f"Expected `chunk_size` >= 1, received {chunk_size}.")


def _takes_arguments_of(function):
    """Decorator: the decorated function takes `function`'s arguments, by its
    signature (names and defaults written once, there), and receives them all
    bound, defaults applied. For an `iter_*` form and its whole-array form."""
    signature = inspect.signature(function)

    def decorate(body):
        @functools.wraps(body)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return body(**bound.arguments)

        wrapper.__signature__ = signature
        return wrapper

    return decorate


def _chunks(images, chunk_size):
    for start in range(0, len(images), chunk_size):
        yield np.asarray(images[start : start + chunk_size])


def _cast_like(values, dtype):
    """Float results -> `dtype`, rounded and clipped for integer dtypes."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return values.astype(dtype)


def _warp(images, src_from_dst, output_size=None):
    """numpy (n, H, W[, C]) and (n, 3, 3) -> float32 (n, Ho, Wo[, C])."""
    x = images.astype(np.float32)
    if x.ndim == 3:
        x = x[..., None]
    out = warp(
        ops.convert_to_tensor(x),
        ops.convert_to_tensor(src_from_dst.astype(np.float32)),
        output_size,
    )
    out = ops.convert_to_numpy(out)
    return out[..., 0] if images.ndim == 3 else out


def _collect(chunks, length, image_shape, dtype):
    """Concatenates `(images, matrices)` chunks into preallocated arrays."""
    images = np.empty((length,) + tuple(image_shape), dtype)
    matrices = np.empty((length, 3, 3), np.float64)
    start = 0
    for image_chunk, matrix_chunk in chunks:
        images[start : start + len(image_chunk)] = image_chunk
        matrices[start : start + len(image_chunk)] = matrix_chunk
        start += len(image_chunk)
    return images, matrices


def _translations(shift):
    """(n, 2) shifts (tx, ty) -> (n, 3, 3) matrices `[[1, 0, tx], [0, 1, ty]]`."""
    matrices = np.tile(np.eye(3), (len(shift), 1, 1))
    matrices[:, :2, 2] = shift
    return matrices


# === Perspective perturbation (Lin & Lucey, IC-STN) ===


def homography_from_corners(src_points, dst_points):
    """Homographies mapping four points exactly onto four others (DLT).

    Solves, in float64, the 8x8 linear system of the direct linear transform
    with `H[2, 2] = 1`, so that `H @ (x, y, 1)` is proportional to
    `(x', y', 1)` for each pair of points.

    Args:
        src_points: array (N, 4, 2) or (4, 2) of (x, y), no three collinear.
        dst_points: array (N, 4, 2) or (4, 2) of (x', y').

    Returns:
        float64 array (N, 3, 3) mapping `src_points` to `dst_points`.
    """
    src = np.asarray(src_points, np.float64)
    dst = np.asarray(dst_points, np.float64)
    src, dst = np.broadcast_arrays(src, dst)
    if src.shape[-2:] != (4, 2):
        raise ValueError(f"Expected points of shape (N, 4, 2) or (4, 2), received {src.shape}.")
    src = src.reshape(-1, 4, 2)
    dst = dst.reshape(-1, 4, 2)
    x, y = src[..., 0], src[..., 1]
    u, v = dst[..., 0], dst[..., 1]
    one, zero = np.ones_like(x), np.zeros_like(x)
    rows_u = np.stack([x, y, one, zero, zero, zero, -u * x, -u * y], axis=-1)
    rows_v = np.stack([zero, zero, zero, x, y, one, -v * x, -v * y], axis=-1)
    system = np.concatenate([rows_u, rows_v], axis=1)
    rhs = np.concatenate([u, v], axis=1)
    try:
        h = np.linalg.solve(system, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError as error:
        raise ValueError("Degenerate corners: three of the four points are collinear.") from error
    return np.concatenate([h, np.ones_like(h[:, :1])], axis=1).reshape(-1, 3, 3)


def iter_perspective_perturbation(images, sigma, seed=0, chunk_size=CHUNK_SIZE):
    """Chunks of `perspective_perturbation`; see it for the arguments.

    Yields:
        `(perturbed, matrices)` for consecutive chunks of `images`.
    """
    _check_images(images, chunk_size)
    if not sigma >= 0:
        raise ValueError(f"Expected `sigma` >= 0, received sigma={sigma!r}.")
    return _iter_perspective(images, sigma, np.random.default_rng(seed), chunk_size)


def _iter_perspective(images, sigma, rng, chunk_size):
    height, width = images.shape[1], images.shape[2]
    corners = np.array(
        [[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]], np.float64
    )
    scale = sigma * np.array([width, height], np.float64)
    for chunk in _chunks(images, chunk_size):
        # 10 normal draws per image: 4 corners x (dx, dy), then the shared shift.
        noise = rng.standard_normal((len(chunk), 10))
        if sigma == 0:
            yield chunk.copy(), np.tile(np.eye(3), (len(chunk), 1, 1))
            continue
        moved = corners + noise[:, :8].reshape(-1, 4, 2) * scale + noise[:, None, 8:] * scale
        src_from_dst = homography_from_corners(corners, moved)
        yield _cast_like(_warp(chunk, src_from_dst), chunk.dtype), src_from_dst


def perspective_perturbation(images, sigma, seed=0, chunk_size=CHUNK_SIZE):
    """Random perspective warps of the paper (the IC-STN protocol).

    Each image's four corner points, the pixel centres `(0, 0)`, `(W-1, 0)`,
    `(W-1, H-1)`, `(0, H-1)`, are moved by independent Gaussian noise
    `N(0, (sigma s)^2)` per coordinate, then all four by one random
    translation `(dx, dy)` from the same noise model (`s = W` for x and `H`
    for y; `s = 28` for MNIST). `P` is the homography mapping the canonical
    corners to the moved ones, and `perturbed(p) = original(P p)`: the moved
    corners of the original become the corners of the perturbed image. At
    `sigma = 0.3` the quadrilateral can fold; the protocol keeps it as is.

    Args:
        images: array (N, H, W) or (N, H, W, C), e.g. uint8 MNIST.
        sigma: float >= 0, noise relative to the image size (0.1, 0.2, 0.3 in
            the paper). `0` returns the images unchanged.
        seed: int or `np.random.Generator`. Defaults to `0`.
        chunk_size: int, images warped at a time. Defaults to `4096`.

    Returns:
        `(perturbed, matrices)`: the images, with the input's dtype and shape,
        and float64 (N, 3, 3) pixel `src_from_dst` matrices `P` (identity for
        `sigma = 0`).

    Example:

    >>> images = np.zeros((2, 28, 28), np.uint8)
    >>> perturbed, matrices = perspective_perturbation(images, sigma=0.1)
    >>> perturbed.shape, matrices.shape
    ((2, 28, 28), (2, 3, 3))
    """
    chunks = iter_perspective_perturbation(images, sigma, seed, chunk_size)
    return _collect(chunks, len(images), images.shape[1:], images.dtype)


def iter_oracle_align(perturbed, matrices, chunk_size=CHUNK_SIZE):
    """Chunks of `oracle_align`; see it for the arguments.

    Yields:
        float32 aligned images for consecutive chunks.
    """
    _check_images(perturbed, chunk_size)
    if len(matrices) != len(perturbed):
        raise ValueError(
            f"Expected one matrix per image, received {len(matrices)} matrices "
            f"for {len(perturbed)} images."
        )
    return _iter_oracle(perturbed, matrices, chunk_size)


def _iter_oracle(perturbed, matrices, chunk_size):
    for start in range(0, len(perturbed), chunk_size):
        chunk = np.asarray(perturbed[start : start + chunk_size])
        src_from_dst = np.asarray(matrices[start : start + chunk_size], np.float64)
        yield _warp(chunk, np.linalg.inv(src_from_dst))


def oracle_align(perturbed, matrices, chunk_size=CHUNK_SIZE):
    """Undoes a known perturbation: the reference ("oracle") alignment.

    Warps each image by `inv(P)`, so that `aligned(q) = perturbed(P^-1 q)`,
    which equals the original at `q` (up to the slight blur of two bilinear
    resamplings) wherever `P^-1 q` fell inside the perturbed frame. Ink that
    the perturbation pushed out of the frame is lost and cannot be recovered:
    those pixels come back zero (or faded at the boundary, by the bilinear
    blend with zero padding).

    Args:
        perturbed: array (N, H, W) or (N, H, W, C).
        matrices: array (N, 3, 3), the `src_from_dst` matrices returned with
            `perturbed` (e.g. by `perspective_perturbation`).
        chunk_size: int, images warped at a time. Defaults to `4096`.

    Returns:
        float32 array shaped like `perturbed`, in its value range (not rounded).
    """
    chunks = iter_oracle_align(perturbed, matrices, chunk_size)
    aligned = np.empty(perturbed.shape, np.float32)
    start = 0
    for chunk in chunks:
        aligned[start : start + len(chunk)] = chunk
        start += len(chunk)
    return aligned


# === affNIST-like ===


def _ink_boxes(images):
    """(n, H, W[, C]) -> (n, 4) float boxes (x_min, y_min, x_max, y_max) of ink > 0.

    An image without ink gets the degenerate box at its centre.
    """
    ink = images.reshape(images.shape[:3] + (-1,)).max(axis=-1) > 0
    height, width = ink.shape[1:]
    rows, cols = ink.any(axis=2), ink.any(axis=1)
    boxes = np.stack(
        [
            cols.argmax(axis=1),
            rows.argmax(axis=1),
            width - 1 - cols[:, ::-1].argmax(axis=1),
            height - 1 - rows[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    ).astype(np.float64)
    empty = ~rows.any(axis=1)
    boxes[empty] = [(width - 1) / 2, (height - 1) / 2] * 2
    return boxes


def iter_affnist_like(images, seed=0, chunk_size=CHUNK_SIZE):
    """Chunks of `affnist_like`; see it for the arguments.

    Yields:
        `(images40, matrices)` for consecutive chunks of `images`.
    """
    _check_images(images, chunk_size)
    return _iter_affnist(images, np.random.default_rng(seed), chunk_size)


def _iter_affnist(images, rng, chunk_size):
    pad = AFFNIST_PADDING
    height, width = images.shape[1] + 2 * pad, images.shape[2] + 2 * pad
    centre = np.array([(width - 1) / 2, (height - 1) / 2])
    low = np.array([_AFFNIST_MARGIN, _AFFNIST_MARGIN])
    high = np.array([width - 1, height - 1]) - _AFFNIST_MARGIN
    for chunk in _chunks(images, chunk_size):
        n = len(chunk)
        padding = ((0, 0), (pad, pad), (pad, pad)) + ((0, 0),) * (chunk.ndim - 3)
        padded = np.pad(chunk, padding)
        # 6 uniform draws per image: angle, shear, x scale, y scale, x and y shift.
        u = rng.random((n, 6))
        angle = np.deg2rad(-20.0 + 40.0 * u[:, 0])
        shear = -0.2 + 0.4 * u[:, 1]
        scale_x, scale_y = 0.8 + 0.4 * u[:, 2], 0.8 + 0.4 * u[:, 3]
        cos, sin = np.cos(angle), np.sin(angle)
        # Linear part (dst_from_src) = rotation @ shear @ scale, about the centre.
        linear = np.einsum(
            "nij,njk,nkl->nil",
            np.stack([cos, -sin, sin, cos], axis=1).reshape(-1, 2, 2),
            np.stack([np.ones(n), shear, np.zeros(n), np.ones(n)], 1).reshape(-1, 2, 2),
            np.stack([scale_x, np.zeros(n), np.zeros(n), scale_y], 1).reshape(-1, 2, 2),
        )
        # Where the ink box's corners land before translation, then the range of
        # translations that keeps them inside the frame (with a margin).
        b = _ink_boxes(padded)
        box = np.stack([b[:, [0, 1]], b[:, [2, 1]], b[:, [2, 3]], b[:, [0, 3]]], axis=1)
        landed = np.einsum("nij,nkj->nki", linear, box - centre) + centre
        t_low, t_high = low - landed.min(axis=1), high - landed.max(axis=1)
        shift = np.where(t_high >= t_low, t_low + u[:, 4:] * (t_high - t_low), (t_low + t_high) / 2)
        dst_from_src = np.tile(np.eye(3), (n, 1, 1))
        dst_from_src[:, :2, :2] = linear
        dst_from_src[:, :2, 2] = centre - np.einsum("nij,j->ni", linear, centre) + shift
        src_from_dst = np.linalg.inv(dst_from_src)
        yield _cast_like(_warp(padded, src_from_dst), chunk.dtype), src_from_dst


def affnist_like(images, seed=0, chunk_size=CHUNK_SIZE):
    """affNIST-like digits: padded by 6 pixels, then a random affine warp.

    As affNIST (T. Tieleman), each 28x28 image is padded by 6 pixels to 40x40
    and transformed about the frame's centre by a rotation `U(-20, 20)`
    degrees, an x-shear `U(-0.2, 0.2)`, x and y scales `U(0.8, 1.2)` drawn
    independently (forward map `rotation @ shear @ scale`), then by a random
    translation, uniform over those that keep the digit's ink bounding box
    inside the frame, 2 pixels from its border (so no ink is cut: the
    outermost rows and columns stay empty). affNIST
    itself is not available here; this follows its published recipe, not its
    random draws.

    Args:
        images: array (N, H, W) or (N, H, W, C), e.g. uint8 MNIST.
        seed: int or `np.random.Generator`. Defaults to `0`.
        chunk_size: int, images warped at a time. Defaults to `4096`.

    Returns:
        `(images40, matrices)`: (N, H + 12, W + 12[, C]) images with the
        input's dtype, and float64 (N, 3, 3) `src_from_dst` matrices from the
        output frame to the *padded* input frame (so `oracle_align(images40,
        matrices)` returns the padded digit).
    """
    pad = 2 * AFFNIST_PADDING
    shape = (images.shape[1] + pad, images.shape[2] + pad) + tuple(images.shape[3:])
    chunks = iter_affnist_like(images, seed, chunk_size)
    return _collect(chunks, len(images), shape, images.dtype)


# === infiMNIST-like ===


def _smoothing_matrix(size, sigma):
    """(size, size) Gaussian smoothing whose rows have unit sum of squares.

    `K @ noise` of i.i.d. unit-variance noise then has unit variance at every
    pixel, borders included.
    """
    offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / np.sqrt((kernel**2).sum(axis=1, keepdims=True))


def _thicken(images, amount):
    """Blends float images towards their grey dilation (amount > 0) or erosion
    (amount < 0) by a 3x3 cross, by |amount| in [0, 1]."""
    padding = ((0, 0), (1, 1), (1, 1)) + ((0, 0),) * (images.ndim - 3)
    p = np.pad(images, padding)
    shifted = np.stack(
        [p[:, 1:-1, 1:-1], p[:, :-2, 1:-1], p[:, 2:, 1:-1], p[:, 1:-1, :-2], p[:, 1:-1, 2:]]
    )
    amount = amount.reshape((-1,) + (1,) * (images.ndim - 1))
    thick = np.maximum(amount, 0) * (shifted.max(axis=0) - images)
    thin = np.maximum(-amount, 0) * (shifted.min(axis=0) - images)
    return images + thick + thin


def _iter_infimnist(images, rng, params, chunk_size):
    alpha, sigma, thickening_prob, max_shift = params
    height, width = images.shape[1], images.shape[2]
    smooth_y = _smoothing_matrix(height, sigma)
    smooth_x = _smoothing_matrix(width, sigma)
    grid_x, grid_y = (ops.convert_to_numpy(g) for g in pixel_grid((height, width)))
    field_size = 2 * height * width
    for chunk in _chunks(images, chunk_size):
        # One uniform draw per image for: the two noise fields, whether and how
        # much to thicken, and the (tx, ty) translation.
        u = rng.random((len(chunk), field_size + 4))
        noise = 2.0 * u[:, :field_size].reshape(-1, 2, height, width) - 1.0
        # U(-1, 1) has variance 1/3: sqrt(3) brings the smoothed field to unit
        # standard deviation, then `alpha` pixels.
        field = smooth_y @ noise @ smooth_x.T
        field *= np.sqrt(3.0) * alpha
        amount = np.where(u[:, field_size] < thickening_prob, 2.0 * u[:, field_size + 1] - 1.0, 0.0)
        shift = max_shift * (2.0 * u[:, field_size + 2 :] - 1.0)
        source = _thicken(chunk.astype(np.float32), amount)
        if source.ndim == 3:
            source = source[..., None]
        x = grid_x + shift[:, 0, None, None] + field[:, 0]
        y = grid_y + shift[:, 1, None, None] + field[:, 1]
        out = bilinear_sample(
            ops.convert_to_tensor(source),
            ops.convert_to_tensor(x.astype(np.float32)),
            ops.convert_to_tensor(y.astype(np.float32)),
        )
        out = ops.convert_to_numpy(out)
        out = out[..., 0] if chunk.ndim == 3 else out
        yield _cast_like(out, chunk.dtype), _translations(shift)


def infimnist_like(
    images,
    seed=0,
    alpha=1.5,
    sigma=4.0,
    thickening_prob=0.5,
    max_shift=2.0,
    chunk_size=CHUNK_SIZE,
):
    """infiMNIST-like deformations: smooth random displacements, thickening,
    small translations.

    A re-implementation in the spirit of infiMNIST (Loosli, Canu, Bottou,
    2007), *not* bit-exact with its generator, whose deformation tables are
    not available here. Each image is:

    1. with probability `thickening_prob`, thickened or thinned: blended by a
       random amount `a ~ U(-1, 1)` towards its grey dilation (`a > 0`) or
       erosion (`a < 0`) by a 3x3 cross;
    2. resampled through a smooth random displacement field `d` (per axis,
       uniform noise smoothed by a Gaussian of `sigma` pixels and scaled to a
       standard deviation of `alpha` pixels; Simard et al.'s elastic
       distortion with their alpha=34, sigma=4 has about 1.4 pixels);
    3. translated by `t ~ U(-max_shift, max_shift)^2` pixels.

    That is, `output(p) = thickened(p + t + d(p))`.

    Args:
        images: array (N, H, W) or (N, H, W, C), e.g. uint8 MNIST.
        seed: int or `np.random.Generator`. Defaults to `0`.
        alpha: float, standard deviation of the displacements in pixels.
            Defaults to `1.5`.
        sigma: float, smoothness (Gaussian width) of the field in pixels.
            Defaults to `4.0`.
        thickening_prob: float, probability of thickening or thinning.
            Defaults to `0.5`.
        max_shift: float, largest translation in pixels. Defaults to `2.0`.
        chunk_size: int, images deformed at a time. Defaults to `4096`.

    Returns:
        `(deformed, matrices)`: images with the input's shape and dtype, and
        float64 (N, 3, 3) translations `[[1, 0, tx], [0, 1, ty], [0, 0, 1]]`
        (`src_from_dst`, the global part of the deformation;
        `oracle_align(deformed, matrices)` re-centres the digits).
    """
    chunks = iter_infimnist_like(images, seed, alpha, sigma, thickening_prob, max_shift, chunk_size)
    return _collect(chunks, len(images), images.shape[1:], images.dtype)


@_takes_arguments_of(infimnist_like)
def iter_infimnist_like(images, seed, alpha, sigma, thickening_prob, max_shift, chunk_size):
    """Chunks of `infimnist_like`; see it for the arguments (its signature,
    defaults included).

    Yields:
        `(deformed, matrices)` for consecutive chunks of `images`.
    """
    _check_images(images, chunk_size)
    if not (alpha >= 0 and sigma > 0 and 0 <= thickening_prob <= 1 and max_shift >= 0):
        raise ValueError(
            "Expected alpha >= 0, sigma > 0, 0 <= thickening_prob <= 1 and "
            f"max_shift >= 0, received alpha={alpha!r}, sigma={sigma!r}, "
            f"thickening_prob={thickening_prob!r}, max_shift={max_shift!r}."
        )
    rng = np.random.default_rng(seed)
    params = (alpha, sigma, thickening_prob, max_shift)
    return _iter_infimnist(images, rng, params, chunk_size)
