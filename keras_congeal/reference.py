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
* an `int`: the image at that index.
* an array `(H, W[, C])`: that image (e.g. a template the user drew).
"""

import numpy as np

__all__ = ["STRATEGIES", "choose_reference"]

STRATEGIES = ("medoid", "mean")


def _as_float(images, data_range):
    return np.asarray(images, dtype="float32") / np.float32(data_range)


def choose_reference(images, strategy="medoid", data_range=1.0, sample_size=1000, seed=0,
                     chunk_size=4096):
    """Picks the reference image of `images` by `strategy`.

    Args:
        images: array-like (N, H, W, C) indexable by slices (a NumPy array,
            a memory map or an h5py dataset).
        strategy: `"medoid"`, `"mean"`, an `int` index or an image array.
        data_range: float. The value of white in `images` (255 for uint8).
        sample_size: int. Images considered by `"medoid"`.
        seed: int. Seed of the `"medoid"` sample.
        chunk_size: int. Images read at once by `"mean"`.

    Returns:
        `(reference, index)`: the image as float32 in [0, 1] with the images'
        shape `(H, W, C)`, and its index in `images` (`None` for an array).
    """
    n = len(images)
    shape = tuple(images.shape[1:])
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
    flat = _as_float(images[picks], data_range).reshape(len(picks), -1)
    keep = _typical_ink(flat.sum(axis=1))
    picks, flat = picks[keep], flat[keep]
    totals = np.zeros(len(flat), "float64")
    block = max(1, int(16e6 // flat.size))  # ~64 MB of float32 per block
    for start in range(0, len(flat), block):
        rows = flat[start:start + block]
        totals[start:start + block] = np.abs(rows[:, None, :] - flat[None]).sum(axis=(1, 2))
    return int(picks[int(np.argmin(totals))])


def _closest_to_mean(images, data_range, chunk_size):
    n = len(images)
    total, inks = None, []
    for start in range(0, n, chunk_size):
        chunk = _as_float(images[start:start + chunk_size], data_range).astype("float64")
        total = chunk.sum(axis=0) if total is None else total + chunk.sum(axis=0)
        inks.append(chunk.reshape(len(chunk), -1).sum(axis=1))
    mean = (total / n).astype("float32")
    typical = _typical_ink(np.concatenate(inks))
    best, best_distance = 0, np.inf
    for start in range(0, n, chunk_size):
        chunk = _as_float(images[start:start + chunk_size], data_range)
        distances = np.abs(chunk - mean).reshape(len(chunk), -1).sum(axis=1)
        distances[~typical[start:start + chunk_size]] = np.inf
        i = int(np.argmin(distances))
        if distances[i] < best_distance:
            best, best_distance = start + i, distances[i]
    return best
