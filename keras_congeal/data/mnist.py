"""Reading MNIST from a local `mnist.npz` and sampling per-digit subsets.

Nothing is downloaded: the file is found from an explicit `path` or from the
`KERAS_CONGEAL_DATA` environment variable (a directory holding `mnist.npz`).
The file holds `x_train` (60000, 28, 28) uint8, `y_train` (60000,),
`x_test` (10000, 28, 28) and `y_test` (10000,), as `keras.datasets.mnist`.

MNIST: Y. LeCun, C. Cortes, C. Burges; commonly distributed under CC BY-SA 3.0.
"""

import os

import numpy as np

__all__ = [
    "DATA_ENV_VAR",
    "MNIST_FILENAME",
    "resolve_mnist_path",
    "load_mnist",
    "mnist_digit_indices",
    "mnist_digit_subset",
]

DATA_ENV_VAR = "KERAS_CONGEAL_DATA"
MNIST_FILENAME = "mnist.npz"
_SPLITS = ("train", "test", "train+test")
_KEYS = ("x_train", "y_train", "x_test", "y_test")


def resolve_mnist_path(path=None):
    """Returns the path of `mnist.npz`, or raises `FileNotFoundError`.

    Args:
        path: str or `os.PathLike`, optional. `mnist.npz` itself or the
            directory that holds it. Defaults to `$KERAS_CONGEAL_DATA/mnist.npz`.

    Returns:
        The path (str) of an existing file.
    """
    if path is None:
        directory = os.environ.get(DATA_ENV_VAR)
        if not directory:
            raise FileNotFoundError(
                f"MNIST not found: pass `path` (the {MNIST_FILENAME} file or its "
                f"directory) or set the environment variable {DATA_ENV_VAR} to a "
                f"directory containing {MNIST_FILENAME}."
            )
        candidate = os.path.join(directory, MNIST_FILENAME)
        origin = f"{DATA_ENV_VAR}={directory!r}"
    else:
        path = os.fspath(path)
        is_dir = os.path.isdir(path)
        candidate = os.path.join(path, MNIST_FILENAME) if is_dir else path
        origin = f"path={path!r}"
    if not os.path.isfile(candidate):
        raise FileNotFoundError(
            f"MNIST not found at {candidate!r} (from {origin}): expected the file "
            f"{MNIST_FILENAME} with arrays {', '.join(_KEYS)}."
        )
    return candidate


def load_mnist(path=None):
    """Loads MNIST from a local `mnist.npz`.

    Args:
        path: str or `os.PathLike`, optional. `mnist.npz` or its directory.
            Defaults to the directory named by `$KERAS_CONGEAL_DATA`.

    Returns:
        `(x_train, y_train), (x_test, y_test)`, as `keras.datasets.mnist`:
        uint8 images (N, 28, 28) and labels (N,).

    Raises:
        FileNotFoundError: when the file cannot be found.
        KeyError: when the file lacks one of the four arrays.
    """
    filename = resolve_mnist_path(path)
    with np.load(filename) as data:
        missing = [key for key in _KEYS if key not in data.files]
        if missing:
            raise KeyError(
                f"{filename!r} lacks arrays {missing}; expected {list(_KEYS)}."
            )
        arrays = [data[key] for key in _KEYS]
    return (arrays[0], arrays[1]), (arrays[2], arrays[3])


def mnist_digit_indices(labels, digit, n, seed=0):
    """Indices of `n` images of one digit, sampled without replacement.

    The order is a seeded permutation of that digit's images, so the subset of
    size `n` is a prefix of the subset of any larger size with the same seed
    (MNIST-1000 is contained in MNIST-6000).

    Args:
        labels: int array (N,), e.g. `y_train`.
        digit: int in 0..9.
        n: int, the number of images (>= 1).
        seed: int or `np.random.Generator`. Defaults to `0`.

    Returns:
        int64 array (n,) of indices into `labels`.
    """
    digit = _check_digit(digit)
    candidates = np.flatnonzero(np.asarray(labels) == digit)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Expected `n` a positive integer, received n={n!r}.")
    if n > len(candidates):
        raise ValueError(
            f"Requested n={n} images of digit {digit}, but only "
            f"{len(candidates)} exist."
        )
    order = np.random.default_rng(seed).permutation(len(candidates))
    return candidates[order[:n]].astype(np.int64)


def mnist_digit_subset(digit, n, seed=0, split="train", path=None):
    """`n` MNIST images of one digit, sampled reproducibly without replacement.

    Args:
        digit: int in 0..9.
        n: int, the number of images (at most the number of that digit in the
            split, e.g. 6131 threes in the training set; with `"train+test"`,
            in both, at least 6313 for every digit).
        seed: int or `np.random.Generator`. Defaults to `0`.
        split: `"train"`, `"test"` or `"train+test"`: the training images
            first (the same subset as `"train"` when there are `n`), then
            test images. Defaults to `"train"`.
        path: `mnist.npz` or its directory; see `load_mnist`.

    Returns:
        uint8 array (n, 28, 28).

    Example:

    >>> threes = mnist_digit_subset(3, 1000)  # doctest: +SKIP
    >>> threes.shape  # doctest: +SKIP
    (1000, 28, 28)
    """
    if split not in _SPLITS:
        raise ValueError(f"Unknown split={split!r}. Expected one of {_SPLITS}.")
    train, test = load_mnist(path)
    if split == "train+test":
        # The training images first (the "train" subset while n allows),
        # then test images: n up to 6313 for every digit.
        in_train = int(np.sum(train[1] == _check_digit(digit)))
        in_both = in_train + int(np.sum(test[1] == digit))
        if n > in_both:
            raise ValueError(
                f"Requested n={n} images of digit {digit}, but only {in_both} exist "
                f"in the training and test sets."
            )
        if n > in_train:
            extra = mnist_digit_indices(test[1], digit, n - in_train, seed=seed)
            order = mnist_digit_indices(train[1], digit, in_train, seed=seed)
            return np.concatenate([train[0][order], test[0][extra]])
        split = "train"
    images, labels = train if split == "train" else test
    return images[mnist_digit_indices(labels, digit, n, seed=seed)]


def _check_digit(digit):
    if isinstance(digit, bool) or not isinstance(digit, (int, np.integer)):
        raise ValueError(f"Expected `digit` an integer in 0..9, received {digit!r}.")
    if not 0 <= digit <= 9:
        raise ValueError(f"Expected `digit` in 0..9, received digit={digit}.")
    return int(digit)
