"""Alignment quality measures, computed in NumPy with running sums so that they
work on sets that do not fit in memory.

* APSNR, the paper's Eq. (9): `10 log10(255^2 / MSE)`, MSE the mean squared
  difference between each aligned image and the mean aligned image, on the
  0..255 scale whatever the input's dtype.
* Mean and variance images (float64).
* Degenerate-solution measures (APSNR alone can be gamed by shrinking the
  content or pushing it out of the frame): the **ink kept**, `sum(aligned) /
  sum(input)` over the set, and the **content scale**, the median linear scale
  of the content in the aligned image relative to the input,
  `1 / sqrt(|det J|)` with `J` the Jacobian of the `src_from_dst` transform at
  the image centre (1 = unchanged, < 1 = shrunk).
* The **landmark error** of the paper's Table 2, when landmarks are known
  (faces): how far each landmark's aligned positions spread around their mean.
"""

import numpy as np

__all__ = [
    "ImageStats",
    "apsnr",
    "content_scale",
    "ink_kept",
    "map_points",
    "aligned_points",
    "landmark_error",
    "AlignmentMeter",
]


def _mean_and_m2(batch):
    """Per-pixel mean and sum of squared deviations of a batch, in float64.

    A float32 batch (the aligned images) is not copied to float64: its
    deviations from the float32-rounded mean are float32 and summed in float64
    (about twice as fast), then corrected by `n (mean - rounded)^2`, so the
    result differs from the float64 computation by float32 rounding of each
    deviation (~1e-7 relative)."""
    if batch.dtype != np.float32:
        batch = batch.astype("float64")
        mean = batch.mean(axis=0)
        return mean, np.square(batch - mean).sum(axis=0)
    mean = batch.mean(axis=0, dtype="float64")
    rounded = mean.astype("float32")
    deviations = batch - rounded
    np.square(deviations, out=deviations)
    m2 = deviations.sum(axis=0, dtype="float64")
    m2 -= len(batch) * np.square(mean - rounded.astype("float64"))
    return mean, np.maximum(m2, 0.0)


class ImageStats:
    """Running mean and variance images, merged batch by batch (Chan et al.).

    Args:
        data_range: float. The value of "white" in the images fed to
            `update`: 255 for uint8 data, 1 for floats in [0, 1]. APSNR is
            always reported on the 0..255 scale.

    Example:

    >>> stats = ImageStats(data_range=1.0)
    >>> for batch in batches:
    ...     stats.update(batch)
    >>> stats.apsnr(), stats.mean.shape
    """

    def __init__(self, data_range=1.0):
        if data_range <= 0:
            raise ValueError(f"Expected data_range > 0, received {data_range}.")
        self.data_range = float(data_range)
        self.count = 0
        self._mean = None
        self._m2 = None

    def update(self, images):
        """Adds a batch (B, H, W[, C]) of images."""
        batch = np.asarray(images)
        if batch.ndim < 3:
            raise ValueError(
                f"Expected a batch of images (batch, height, width[, channels]), "
                f"received shape {batch.shape}."
            )
        n = len(batch)
        if n == 0:
            return self
        if self._mean is not None and batch.shape[1:] != self._mean.shape:
            raise ValueError(
                f"Image shape {batch.shape[1:]} differs from earlier images "
                f"{self._mean.shape}."
            )
        mean, m2 = _mean_and_m2(batch)
        scale = 255.0 / self.data_range
        return self._add(n, mean * scale, m2 * scale**2)

    def merge(self, other):
        """Adds the images that `other` (an `ImageStats`) has seen: the
        statistics of both sets together, whatever their data ranges."""
        if other.count == 0:
            return self
        if self._mean is not None and other._mean.shape != self._mean.shape:
            raise ValueError(
                f"Image shape {other._mean.shape} differs from earlier images "
                f"{self._mean.shape}."
            )
        return self._add(other.count, other._mean, other._m2)

    def _add(self, n, mean, m2):
        """Merges `n` images of mean `mean` and sum of squared deviations
        `m2` (0..255 scale) into the running statistics."""
        if self._mean is None:
            self.count, self._mean, self._m2 = n, mean, m2
            return self
        total = self.count + n
        delta = mean - self._mean
        self._mean = self._mean + delta * (n / total)
        self._m2 = self._m2 + m2 + delta**2 * (self.count * n / total)
        self.count = total
        return self

    def _check(self):
        if self.count == 0:
            raise ValueError("No images were added.")

    @property
    def mean(self):
        """Mean image, in the data's own range (float64)."""
        self._check()
        return self._mean * (self.data_range / 255.0)

    @property
    def variance(self):
        """Per-pixel (population) variance image, in the data's range squared."""
        self._check()
        return self._m2 / self.count * (self.data_range / 255.0) ** 2

    def mse(self):
        """Eq. (9)'s MSE on the 0..255 scale."""
        self._check()
        return float(self._m2.sum() / (self.count * self._m2.size))

    def apsnr(self):
        """APSNR in dB (Eq. 9). `inf` for a set of identical images."""
        mse = self.mse()
        return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def apsnr(images, data_range=None):
    """APSNR (dB) of an in-memory set; `data_range` defaults from the dtype."""
    images = np.asarray(images)
    if data_range is None:
        data_range = 255.0 if images.dtype == np.uint8 else 1.0
    return ImageStats(data_range).update(images).apsnr()


def content_scale(transforms, size):
    """Linear scale of the aligned content relative to the input, per image.

    Args:
        transforms: array (N, 3, 3), pixel `src_from_dst` matrices.
        size: tuple `(height, width)` of the aligned images.

    Returns:
        Array (N,): `1 / sqrt(|det J|)` at the centre of the aligned image.
    """
    t = np.asarray(transforms, dtype="float64")
    cx, cy = (size[1] - 1) / 2.0, (size[0] - 1) / 2.0
    w = t[:, 2, 0] * cx + t[:, 2, 1] * cy + t[:, 2, 2]
    u = t[:, 0, 0] * cx + t[:, 0, 1] * cy + t[:, 0, 2]
    v = t[:, 1, 0] * cx + t[:, 1, 1] * cy + t[:, 1, 2]
    # Jacobian of (u/w, v/w) with respect to (x, y).
    j00 = (t[:, 0, 0] * w - u * t[:, 2, 0]) / w**2
    j01 = (t[:, 0, 1] * w - u * t[:, 2, 1]) / w**2
    j10 = (t[:, 1, 0] * w - v * t[:, 2, 0]) / w**2
    j11 = (t[:, 1, 1] * w - v * t[:, 2, 1]) / w**2
    det = np.abs(j00 * j11 - j01 * j10)
    with np.errstate(divide="ignore"):
        return 1.0 / np.sqrt(det)


def ink_kept(inputs, aligned):
    """`sum(aligned) / sum(inputs)` over the whole set (1 = all content kept)."""
    total = float(np.sum(inputs, dtype="float64"))
    return float(np.sum(aligned, dtype="float64")) / total if total else float("nan")


def map_points(matrices, points):
    """Points (N, K, 2) `(x, y)` through per-image 3x3 matrices (N, 3, 3), in
    float64 with the perspective divide."""
    points = np.asarray(points, "float64")
    homogeneous = np.concatenate([points, np.ones(points.shape[:-1] + (1,))], axis=-1)
    mapped = np.einsum("nij,nkj->nki", np.asarray(matrices, "float64"), homogeneous)
    return mapped[..., :2] / mapped[..., 2:]


def aligned_points(points, transforms):
    """Input-image points (N, K, 2) `(x, y)` -> the aligned images' pixels,
    through the inverse of each `src_from_dst` transform (N, 3, 3)."""
    return map_points(np.linalg.inv(np.asarray(transforms, "float64")), points)


def landmark_error(points, eyes=(0, 1)):
    """Table 2's landmark error of aligned landmarks (N, K, 2).

    Each landmark's spread is the mean distance of its N positions to their
    mean; the error is the mean spread over the K landmarks divided by the
    mean distance between the two `eyes` landmarks, in percent.

    Returns:
        dict: `error_percent`, `spread_percent` (per landmark), `spread_pixels`
        (per landmark), `eye_distance` (pixels) and `images`.
    """
    points = np.asarray(points, "float64")
    if points.ndim != 3 or points.shape[-1] != 2 or len(points) == 0:
        raise ValueError(f"Expected points of shape (N >= 1, K, 2), received {points.shape}.")
    spread = np.linalg.norm(points - points.mean(axis=0), axis=-1).mean(axis=0)
    eye_distance = float(np.linalg.norm(points[:, eyes[0]] - points[:, eyes[1]], axis=-1).mean())
    return {
        "error_percent": float(100.0 * spread.mean() / eye_distance),
        "spread_percent": (100.0 * spread / eye_distance).tolist(),
        "spread_pixels": spread.tolist(),
        "eye_distance": eye_distance,
        "images": int(len(points)),
    }


class AlignmentMeter:
    """Streams a whole alignment run: input/aligned stats, ink, scales.

    `update(inputs, aligned, transforms)` per chunk; `summary()` gives APSNR
    before and after, the ink kept and the median content scale.
    """

    def __init__(self, data_range=1.0):
        self.before = ImageStats(data_range)
        self.after = ImageStats(data_range)
        self._ink_in = 0.0
        self._ink_out = 0.0
        self._scales = []

    def update(self, inputs, aligned, transforms):
        self.before.update(inputs)
        self.after.update(aligned)
        self._ink_in += float(np.sum(inputs, dtype="float64"))
        self._ink_out += float(np.sum(aligned, dtype="float64"))
        size = np.asarray(aligned).shape[1:3]
        self._scales.append(content_scale(transforms, size))
        return self

    def merge(self, other):
        """Adds what `other` (an `AlignmentMeter`) has measured: meters
        filled side by side (threads, processes) give one summary."""
        self.before.merge(other.before)
        self.after.merge(other.after)
        self._ink_in += other._ink_in
        self._ink_out += other._ink_out
        self._scales += other._scales
        return self

    def summary(self):
        scales = np.concatenate(self._scales)
        return {
            "images": self.before.count,
            "apsnr_before": self.before.apsnr(),
            "apsnr_after": self.after.apsnr(),
            "ink_kept": self._ink_out / self._ink_in if self._ink_in else float("nan"),
            "content_scale_median": float(np.median(scales)),
            "content_scale_p05": float(np.percentile(scales, 5)),
            "content_scale_p95": float(np.percentile(scales, 95)),
        }
