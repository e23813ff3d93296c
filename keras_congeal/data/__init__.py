"""Data protocols of the paper: MNIST subsets, perturbed MNIST, affNIST-like and
infiMNIST-like digits, and the built-in demo set.

Command line: `python -m keras_congeal.data --help`.
"""

from keras_congeal.data.mnist import (
    DATA_ENV_VAR,
    load_mnist,
    mnist_digit_indices,
    mnist_digit_subset,
    resolve_mnist_path,
)
from keras_congeal.data.perturb import (
    affnist_like,
    homography_from_corners,
    infimnist_like,
    iter_affnist_like,
    iter_infimnist_like,
    iter_oracle_align,
    iter_perspective_perturbation,
    oracle_align,
    perspective_perturbation,
)

__all__ = [
    "DATA_ENV_VAR",
    "load_mnist",
    "resolve_mnist_path",
    "mnist_digit_indices",
    "mnist_digit_subset",
    "homography_from_corners",
    "perspective_perturbation",
    "iter_perspective_perturbation",
    "oracle_align",
    "iter_oracle_align",
    "affnist_like",
    "iter_affnist_like",
    "infimnist_like",
    "iter_infimnist_like",
    "load_demo",
]


def __getattr__(name):
    # Imported on first use so that `python -m keras_congeal.data.demo` does
    # not find the module already imported by its package.
    if name == "load_demo":
        from keras_congeal.data.demo import load_demo

        return load_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
