"""Choosing the reference image `I_j` that the distortion loss aligns to.

Strategies:

* `"medoid"` (default): the image with the smallest total L1 distance to the
  others, computed on a random sample of at most `sample_size` images. A real
  image of the set that is typical of it: the paper's `I_j` is one of the set.
* `"mean"`: the image closest (L1) to the set's mean image (the mean itself is
  blurred by the misalignment, so it is only used to pick a real image).

Both automatic strategies only consider images whose ink (sum of values) is
within a factor 2 of the median ink. Without that rule they pick a blank or
nearly blank image (a digit warped out of the frame): in L1, an empty image is
closer to every thin-stroke digit than any other digit is, and a blank
reference makes the distortion loss erase every image.

They also prefer images whose content is whole: in a set with a background
(dark frames around the content, as digits), an image with more than
`MAX_BORDER_INK` of its ink on the border band touches the frame, so part of
it was cut away (a 7 whose bar was warped out of the frame looks like a 1);
such images are candidates only if no whole image is left. In a set without a
background (photos: most of the median image's border band is not dark),
nothing counts as cut and no image is excluded.

The medoid is chosen among the candidates by its distance to the whole
sample, so it stays typical of the set; `ReferenceWarning` is issued when it
is farther from the set than the median image (an atypical reference: look at
`reference.png`, choose another with `--reference`).

* an `int`: the image at that index.
* an array `(H, W[, C])`: that image (e.g. a template the user drew).
"""

import os
import warnings

import numpy as np

__all__ = ["STRATEGIES", "MAX_BORDER_INK", "ReferenceWarning", "border_ink", "choose_reference"]

# Largest share of an image's ink on its border band for its content to count as whole.
MAX_BORDER_INK = 0.02
# A pixel below this value (images in [0, 1]) is background.
DARK = 0.05


class ReferenceWarning(UserWarning):
    """The automatically chosen reference is atypical of the set."""

STRATEGIES = ("medoid", "mean")


def _as_float(images, data_range):
    return np.asarray(images, dtype="float32") / np.float32(data_range)


def choose_reference(images, strategy="medoid", data_range=1.0, sample_size=1000, seed=0,
                     chunk_size=4096):
    """Picks the reference image of `images` by `strategy`.

    Args:
        images: array-like (N, H, W, C) indexable by slices (a NumPy array,
            a memory map or an h5py dataset).
        strategy: `"medoid"`, `"mean"`, an `int` index, an image array, or
            the path of a PNG/JPEG file of the images' size (the one place
            where `CongealSettings.reference` is interpreted; the command
            line's `--reference` comes here too).
        data_range: float. The value of white in `images` (255 for uint8).
        sample_size: int. Images considered by `"medoid"`.
        seed: int. Seed of the `"medoid"` sample.
        chunk_size: int. Images read at once by `"mean"`.

    Returns:
        `(reference, index)`: the image as float32 in [0, 1] with the images'
        shape `(H, W, C)`, and its index in `images` (`None` for an array or
        a file).

    Raises:
        ValueError: an unknown strategy, an index out of range, an array of
            another shape; `keras_congeal.io.InputError` (a `ValueError`) for
            a missing, unreadable or wrongly sized image file.
    """
    n = len(images)
    shape = tuple(images.shape[1:])
    if isinstance(strategy, (str, os.PathLike)) and strategy not in STRATEGIES:
        return _read_reference_file(os.fspath(strategy), shape), None
    if isinstance(strategy, (np.ndarray, list)):
        reference = np.asarray(strategy, dtype="float32")
        if reference.ndim == 2 and len(shape) == 3 and shape[-1] == 1:
            reference = reference[..., None]
        if reference.shape != shape:
            raise ValueError(
                f"The reference image has shape {reference.shape}; expected the images' "
                f"shape {shape}."
            )
        return reference / np.float32(data_range), None
    if n == 0:
        raise ValueError("Cannot choose a reference from an empty set of images.")
    if isinstance(strategy, (int, np.integer)) and not isinstance(strategy, bool):
        index = int(strategy)
        if not -n <= index < n:
            raise ValueError(f"Reference index {index} is out of range for {n} images.")
        index %= n
    elif strategy == "medoid":
        index = _medoid(images, data_range, sample_size, seed)
    elif strategy == "mean":
        index = _closest_to_mean(images, data_range, chunk_size)
    else:
        raise ValueError(
            f"Unknown reference strategy={strategy!r}. Expected one of {STRATEGIES}, "
            "an image index or an image array."
        )
    return _as_float(images[index:index + 1], data_range)[0], index


def _read_reference_file(path, shape):
    """The image file `path` as float32 in [0, 1] of `shape` (H, W, C)."""
    from keras_congeal.io import InputError, read_image_file

    height, width, channels = shape
    if not os.path.isfile(path):
        raise InputError(
            f"{path}: no such image file (expected {', '.join(STRATEGIES)}, an image index "
            "or a PNG/JPEG file)"
        )
    image = read_image_file(path, channels=channels)
    if image.shape[:2] != (height, width):
        raise InputError(
            f"{path}: {image.shape[1]}x{image.shape[0]} pixels, but the images are "
            f"{width}x{height}"
        )
    return image.reshape(shape).astype("float32") / np.float32(255.0)


def _border_band(height, width):
    """Mask (H, W) of the border band: 1 pixel per 32 of the smaller side (>= 1)."""
    band = max(1, round(min(height, width) / 32))
    mask = np.ones((height, width), bool)
    mask[band:height - band, band:width - band] = False
    return mask


def _border_stats(images):
    """Per image: the share of its ink on the border band, and the share of the
    band's pixels that are dark (below `DARK` in every channel)."""
    images = np.asarray(images, "float64")
    if images.ndim == 3:
        images = images[..., None]
    mask = _border_band(*images.shape[1:3])
    ink = images.sum(axis=-1)
    total = ink.reshape(len(ink), -1).sum(axis=1)
    shares = np.where(total > 0, ink[:, mask].sum(axis=1) / np.maximum(total, 1e-12), 1.0)
    dark = (images[:, mask].max(axis=-1) < DARK).mean(axis=1)
    return shares, dark


def border_ink(images):
    """Share of each image's ink on its border band.

    Args:
        images: float array (N, H, W, C) or (N, H, W), values in [0, 1].

    Returns:
        float64 (N,): border ink / ink (1 for an image without ink).
    """
    return _border_stats(images)[0]


def _whole(shares, dark):
    """Mask of the images whose content is whole (see the module doc), from
    their `_border_stats`. A set has a background when the border band of the
    median image is mostly dark; without one, nothing counts as cut."""
    if np.median(dark) < 0.5:
        return np.ones(len(shares), bool)
    return shares <= MAX_BORDER_INK


def _candidates(typical, whole):
    """Typical-ink images with whole content; falls back to fewer rules."""
    for mask in (typical & whole, typical):
        if mask.any():
            return mask
    return np.ones_like(typical)


def _typical_ink(ink):
    """Mask of the inks within a factor 2 of the median (all, if none are)."""
    median = np.median(ink)
    mask = (ink >= 0.5 * median) & (ink <= 2.0 * median)
    return mask if mask.any() else np.ones_like(mask)


def _medoid(images, data_range, sample_size, seed):
    n = len(images)
    rng = np.random.default_rng(seed)
    # Sorted unique indices: also valid fancy indexing for h5py datasets.
    picks = np.sort(rng.choice(n, size=min(n, sample_size), replace=False))
    sample = _as_float(images[picks], data_range)
    flat = sample.reshape(len(picks), -1)
    whole = _whole(*_border_stats(sample))
    keep = _candidates(_typical_ink(flat.sum(axis=1)), whole)
    # Each image's L1 distance to the whole sample (typicality), ~64 MB blocks.
    totals = np.zeros(len(flat), "float64")
    block = max(1, int(16e6 // flat.size))
    for start in range(0, len(flat), block):
        rows = flat[start:start + block]
        totals[start:start + block] = np.abs(rows[:, None, :] - flat[None]).sum(axis=(1, 2))
    best = int(np.flatnonzero(keep)[np.argmin(totals[keep])])
    _warn_if_atypical(totals[best], totals, int(picks[best]), "medoid")
    return int(picks[best])


def _warn_if_atypical(distance, distances, index, strategy):
    if distance > np.median(distances):
        share = float(np.mean(distances < distance))
        warnings.warn(ReferenceWarning(
            f"the reference (image {index}, {strategy}) is farther from the set than "
            f"{share:.0%} of its images (few whole, typical images): check reference.png, "
            "or choose one with --reference INDEX|IMAGE.png"
        ), stacklevel=3)


def _closest_to_mean(images, data_range, chunk_size):
    n = len(images)
    total, inks = None, []
    for start in range(0, n, chunk_size):
        chunk = _as_float(images[start:start + chunk_size], data_range).astype("float64")
        total = chunk.sum(axis=0) if total is None else total + chunk.sum(axis=0)
        inks.append(chunk.reshape(len(chunk), -1).sum(axis=1))
    mean = (total / n).astype("float32")
    typical = _typical_ink(np.concatenate(inks))
    distances, stats = [], []
    for start in range(0, n, chunk_size):
        chunk = _as_float(images[start:start + chunk_size], data_range)
        distances.append(np.abs(chunk - mean).reshape(len(chunk), -1).sum(axis=1))
        stats.append(_border_stats(chunk))
    distances = np.concatenate(distances)
    whole = _whole(*(np.concatenate(parts) for parts in zip(*stats, strict=True)))
    keep = _candidates(typical, whole)
    best = int(np.flatnonzero(keep)[np.argmin(distances[keep])])
    _warn_if_atypical(distances[best], distances, best, "mean")
    return best
