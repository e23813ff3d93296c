"""Data protocols of the paper: MNIST subsets, perturbed MNIST, affNIST-like and
infiMNIST-like digits, and the built-in demo set.

Command line: `python -m keras_congeal.data --help`.

The names exported are those of `keras_congeal.data.mnist` and
`keras_congeal.data.perturb` (each module's `__all__`, listed once there),
and `load_demo`.
"""

from keras_congeal.data import mnist as _mnist
from keras_congeal.data import perturb as _perturb
from keras_congeal.data.mnist import *  # noqa: F403 (the names of mnist.__all__)
from keras_congeal.data.perturb import *  # noqa: F403 (the names of perturb.__all__)

__all__ = [*_mnist.__all__, *_perturb.__all__, "load_demo"]  # noqa: F405 (load_demo: below)


def __getattr__(name):
    # Imported on first use so that `python -m keras_congeal.data.demo` does
    # not find the module already imported by its package.
    if name == "load_demo":
        from keras_congeal.data.demo import load_demo

        return load_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
