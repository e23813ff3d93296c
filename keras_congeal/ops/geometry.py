"""Planar geometry for spatial transformers, written with `keras.ops` only.

Coordinate conventions (used everywhere in keras_congeal):

* **Pixel coordinates**: `x` is the column, `y` the row; pixel centres sit at
  integers and the origin is the centre of the top-left pixel. This is what
  users receive (`transforms.npy`, `Congealer.align`).
* **Normalised coordinates**: `u = 2 x / (W - 1) - 1`, `v = 2 y / (H - 1) - 1`,
  so the centres of the corner pixels are at -1 and +1 (the `align_corners=True`
  convention of PyTorch/ONNX `GridSample`). The networks regress parameters in
  this frame so that they do not depend on the image size.
* **Direction**: every matrix here maps a point of the *output* (aligned, "dst")
  image to the point of the *input* ("src") image that it samples from:
  `src_from_dst`. Warping image `I` by `M` gives `J(p) = I(M p)`.

Transform parameters are **offsets from the identity**, so that a regressor
whose outputs are zero produces the identity warp:

| family        | params | matrix `M = I + delta`                          |
|---------------|--------|-------------------------------------------------|
| `translation` | 2      | `[[1, 0, t0], [0, 1, t1], [0, 0, 1]]`           |
| `similarity`  | 4      | `[[1+a, -b, t0], [b, 1+a, t1], [0, 0, 1]]`      |
| `affine`      | 6      | `[[1+p0, p1, p2], [p3, 1+p4, p5], [0, 0, 1]]`   |
| `homography`  | 8      | `[[1+p0, p1, p2], [p3, 1+p4, p5], [p6, p7, 1]]` |

Internally transforms are carried as `delta = M - I`, which keeps the identity
exact through the pixel conversions (a warp by zero parameters returns the input
bit for bit).
"""

from keras import ops

from keras_congeal.constants import TRANSFORMS

__all__ = [
    "TRANSFORMS",
    "num_params",
    "check_transform",
    "params_to_delta",
    "delta_to_params",
    "params_to_matrix",
    "compose_params",
    "delta_to_pixel_matrix",
    "pixel_to_normalized_matrix",
    "invert_matrix",
    "pixel_grid",
    "apply_matrix",
    "transform_points",
    "log_area_change",
    "PERSPECTIVE_EPSILON",
]

# The perspective divide is clamped away from zero: a homography that sends a
# pixel to infinity would otherwise produce inf/NaN coordinates and gradients.
PERSPECTIVE_EPSILON = 1e-2


def check_transform(transform):
    """Returns `transform` if it names a supported family, else raises."""
    if transform not in TRANSFORMS:
        raise ValueError(
            f"Unknown transform family transform={transform!r}. Expected one of "
            f"{sorted(TRANSFORMS)}."
        )
    return transform


def num_params(transform):
    """Number of parameters of a transform family (2, 4, 6 or 8)."""
    return TRANSFORMS[check_transform(transform)]


def _check_params(params, transform):
    n = num_params(transform)
    if len(params.shape) != 2 or params.shape[-1] != n:
        raise ValueError(
            f"Expected `params` of shape (batch, {n}) for transform="
            f"{transform!r}, received shape {tuple(params.shape)}."
        )


def params_to_delta(params, transform):
    """Offset parameters (B, n) -> offset matrices `delta = M - I` (B, 3, 3)."""
    _check_params(params, transform)
    zero = ops.zeros_like(params[:, 0])
    p = [params[:, i] for i in range(params.shape[-1])]
    if transform == "translation":
        rows = [zero, zero, p[0], zero, zero, p[1], zero, zero, zero]
    elif transform == "similarity":
        rows = [p[0], -p[1], p[2], p[1], p[0], p[3], zero, zero, zero]
    elif transform == "affine":
        rows = [p[0], p[1], p[2], p[3], p[4], p[5], zero, zero, zero]
    else:
        rows = [p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], zero]
    return ops.reshape(ops.stack(rows, axis=-1), (-1, 3, 3))


def delta_to_params(delta, transform):
    """Offset matrices (B, 3, 3) -> parameters (B, n) of `transform`.

    The matrix is first normalised so that `M[2, 2] == 1` (for a homography),
    then read back in the family's parameterisation. For `similarity` the
    rotation-scale block is projected onto `[[a, -b], [b, a]]` (least squares);
    entries that the family does not have are dropped.
    """
    check_transform(transform)
    d = ops.reshape(delta, (-1, 9))
    if transform == "homography":
        # M / M22 - I, written on delta to keep the identity exact.
        scale = 1.0 + d[:, 8:9]
        m = (d + ops.convert_to_tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], d.dtype))
        m = m / scale
        d = m - ops.convert_to_tensor([1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], d.dtype)
        return d[:, :8]
    if transform == "affine":
        return ops.take(d, [0, 1, 2, 3, 4, 5], axis=1)
    if transform == "similarity":
        a = 0.5 * (d[:, 0] + d[:, 4])
        b = 0.5 * (d[:, 3] - d[:, 1])
        return ops.stack([a, b, d[:, 2], d[:, 5]], axis=-1)
    return ops.stack([d[:, 2], d[:, 5]], axis=-1)


def params_to_matrix(params, transform):
    """Offset parameters (B, n) -> normalised `src_from_dst` matrices (B, 3, 3)."""
    delta = params_to_delta(params, transform)
    return delta + ops.eye(3, dtype=delta.dtype)


def compose_params(first, second, transform):
    """Parameters of `M_first @ M_second` (apply `second`, then `first`).

    In `src_from_dst` terms: if `first` warps the input into an intermediate
    frame and `second` warps that frame into the output, the composition maps
    output points straight to input points.
    """
    d1 = params_to_delta(first, transform)
    d2 = params_to_delta(second, transform)
    # (I + d1)(I + d2) - I = d1 + d2 + d1 d2: no `I` is added and subtracted,
    # so composing with the identity is exact.
    return delta_to_params(d1 + d2 + ops.matmul(d1, d2), transform)


def _check_size(size):
    height, width = size
    if height < 2 or width < 2:
        raise ValueError(
            f"Images must be at least 2x2 pixels, received size {tuple(size)}."
        )
    return height, width


def _normalized_from_pixel(size, dtype):
    """`N` (3, 3): pixel -> normalised coordinates of an image of `size`."""
    height, width = _check_size(size)
    sx, sy = 2.0 / (width - 1), 2.0 / (height - 1)
    return ops.convert_to_tensor([[sx, 0.0, -1.0], [0.0, sy, -1.0], [0.0, 0.0, 1.0]], dtype)


def _pixel_from_normalized(size, dtype):
    """`N^-1` (3, 3): normalised -> pixel coordinates of an image of `size`."""
    height, width = _check_size(size)
    hx, hy = (width - 1) / 2.0, (height - 1) / 2.0
    return ops.convert_to_tensor([[hx, 0.0, hx], [0.0, hy, hy], [0.0, 0.0, 1.0]], dtype)


def delta_to_pixel_matrix(delta, src_size, dst_size):
    """Normalised offset matrix -> `src_from_dst` matrix in pixel coordinates.

    Args:
        delta: tensor (B, 3, 3), `M_norm - I` for normalised coordinates.
        src_size: tuple `(H, W)` of the input image.
        dst_size: tuple `(H, W)` of the output image.

    Returns:
        Tensor (B, 3, 3) `P = N_src^-1 M_norm N_dst`, written as
        `P = S + N_src^-1 delta N_dst` where `S = N_src^-1 N_dst` is the exact
        scale between the two pixel grids (the identity when the sizes agree),
        so that zero offsets give the identity bit for bit.
    """
    (src_h, src_w), (dst_h, dst_w) = _check_size(src_size), _check_size(dst_size)
    scale = ops.convert_to_tensor(
        [[(src_w - 1) / (dst_w - 1), 0.0, 0.0], [0.0, (src_h - 1) / (dst_h - 1), 0.0],
         [0.0, 0.0, 1.0]],
        delta.dtype,
    )
    pixel_from_normalized = _pixel_from_normalized(src_size, delta.dtype)
    normalized_from_pixel = _normalized_from_pixel(dst_size, delta.dtype)
    return scale + ops.matmul(ops.matmul(pixel_from_normalized, delta), normalized_from_pixel)


def pixel_to_normalized_matrix(matrix, src_size, dst_size):
    """Pixel `src_from_dst` matrix (B, 3, 3) -> normalised matrix (B, 3, 3)."""
    normalized_from_pixel = _normalized_from_pixel(src_size, matrix.dtype)
    pixel_from_normalized = _pixel_from_normalized(dst_size, matrix.dtype)
    return ops.matmul(ops.matmul(normalized_from_pixel, matrix), pixel_from_normalized)


def invert_matrix(matrix):
    """Inverse of a batch of 3x3 matrices (B, 3, 3) by the adjugate formula.

    Written out rather than `ops.linalg.inv` so that it lowers to elementwise
    ops on every backend and exports to ONNX.
    """
    m = ops.reshape(matrix, (-1, 9))
    a, b, c, d, e, f, g, h, i = [m[:, k] for k in range(9)]
    co = [
        e * i - f * h, c * h - b * i, b * f - c * e,
        f * g - d * i, a * i - c * g, c * d - a * f,
        d * h - e * g, b * g - a * h, a * e - b * d,
    ]
    det = a * co[0] + b * co[3] + c * co[6]
    adj = ops.stack(co, axis=-1)
    return ops.reshape(adj / det[:, None], (-1, 3, 3))


def pixel_grid(size, dtype="float32"):
    """Pixel coordinates of an (H, W) image: two (H, W) tensors `x`, `y`."""
    height, width = size
    xs = ops.arange(width, dtype=dtype)
    ys = ops.arange(height, dtype=dtype)
    y, x = ops.meshgrid(ys, xs, indexing="ij")
    return x, y


def apply_matrix(matrix, x, y):
    """Maps a grid of points shared by the batch through 3x3 matrices.

    Args:
        matrix: tensor (B, 3, 3).
        x, y: tensors of the same shape (...), e.g. from `pixel_grid`.

    Returns:
        Two tensors (B, ...): the mapped x and y, after the perspective divide
        (whose denominator is clamped to |w| >= `PERSPECTIVE_EPSILON`).
    """
    m = ops.reshape(matrix, (-1, 9))
    shape = (-1,) + (1,) * len(x.shape)
    coef = [ops.reshape(m[:, k], shape) for k in range(9)]
    xs = coef[0] * x + coef[1] * y + coef[2]
    ys = coef[3] * x + coef[4] * y + coef[5]
    ws = coef[6] * x + coef[7] * y + coef[8]
    return xs / _clamp_w(ws), ys / _clamp_w(ws)


def transform_points(matrix, points):
    """Maps per-image points (B, K, 2) of (x, y) through matrices (B, 3, 3)."""
    ones = ops.ones_like(points[..., :1])
    homogeneous = ops.concatenate([points, ones], axis=-1)
    mapped = ops.einsum("bij,bkj->bki", matrix, homogeneous)
    return mapped[..., :2] / _clamp_w(mapped[..., 2:])


def log_area_change(matrix):
    """`log |det J|` of matrices (B, 3, 3) at the origin (the image centre in
    normalised coordinates): how much each transform magnifies areas there.

    For a `src_from_dst` matrix, a positive value means the output samples a
    larger region of the input, i.e. the content is shrunk.
    """
    m = ops.reshape(matrix, (-1, 9))
    w = _clamp_w(m[:, 8])
    # Jacobian of (x'/w', y'/w') at (0, 0): (A w - t g^T) / w^2.
    j00 = (m[:, 0] * w - m[:, 2] * m[:, 6]) / w**2
    j01 = (m[:, 1] * w - m[:, 2] * m[:, 7]) / w**2
    j10 = (m[:, 3] * w - m[:, 5] * m[:, 6]) / w**2
    j11 = (m[:, 4] * w - m[:, 5] * m[:, 7]) / w**2
    return ops.log(ops.maximum(ops.abs(j00 * j11 - j01 * j10), 1e-12))


def _clamp_w(w):
    # |w| >= eps keeping its sign (0 counts as positive).
    ones = ops.ones_like(w)
    return ops.where(w < 0, -ones, ones) * ops.maximum(ops.abs(w), PERSPECTIVE_EPSILON)
