"""The built-in demo set: 1000 perturbed MNIST threes shipped with the package.

`keras_congeal/assets/demo_mnist.npz` holds 1000 MNIST training images of
digit 3 (`mnist_digit_subset(3, 1000, seed=0)`), perturbed by the paper's
perspective protocol at sigma = 0.2 (`perspective_perturbation(..., seed=0)`),
with the originals and the perturbation matrices, so that a demo can compare
a method with the oracle alignment.

Usage:

    # Print what the demo set holds.
    python -m keras_congeal.data.demo

    # Regenerate the asset from a local MNIST (mnist.npz or its directory).
    python -m keras_congeal.data.demo --rebuild --mnist ../shared/data

The regenerated matrices are identical; the images may differ by one grey
level at rare pixels across Keras backends (float rounding before uint8).
"""

import argparse
import os
import sys
from importlib import resources

import numpy as np

from keras_congeal.data.mnist import load_mnist, mnist_digit_indices
from keras_congeal.data.perturb import perspective_perturbation
from keras_congeal.io.atomic import atomic_file

__all__ = ["DEMO_DIGIT", "DEMO_N", "DEMO_SIGMA", "DEMO_SEED", "load_demo", "build_demo"]

DEMO_DIGIT = 3
DEMO_N = 1000
DEMO_SIGMA = 0.2
DEMO_SEED = 0
_ASSET = "demo_mnist.npz"

_DESCRIPTION = (
    "{n} MNIST training images of digit {digit} (sampled with seed {seed}), "
    "perturbed by random perspective warps at sigma={sigma} (four corners and a "
    "shared translation moved by N(0, (sigma*28)^2) pixels, seed {seed}); "
    "`matrices` are the pixel src_from_dst homographies (perturbed(p) = "
    "original(P p)). MNIST: Y. LeCun, C. Cortes, C. Burges; CC BY-SA 3.0."
)


def _asset_path():
    return resources.files("keras_congeal") / "assets" / _ASSET


def load_demo():
    """Loads the demo set shipped inside the package (no download).

    Returns:
        A dict with `images` (1000, 28, 28) uint8, the perturbed digits;
        `originals` (1000, 28, 28) uint8, the same digits unperturbed;
        `matrices` (1000, 3, 3) float64, the perturbations (`src_from_dst`,
        see `perspective_perturbation`; `oracle_align(images, matrices)` is the
        reference alignment); `indices` (1000,) int64, their indices in the
        MNIST training set; and `description`, a str with the protocol and the
        MNIST credit.

    Example:

    >>> demo = load_demo()
    >>> demo["images"].shape, demo["matrices"].shape
    ((1000, 28, 28), (1000, 3, 3))
    """
    with resources.as_file(_asset_path()) as path, np.load(path) as data:
        demo = {key: data[key] for key in ("images", "originals", "matrices", "indices")}
        settings = {key: data[key].item() for key in ("digit", "sigma", "seed")}
    demo["description"] = _DESCRIPTION.format(n=len(demo["images"]), **settings)
    return demo


def build_demo(mnist_path=None, output=None):
    """Regenerates the demo asset from a local MNIST.

    Args:
        mnist_path: `mnist.npz` or its directory; see `load_mnist`.
        output: str, where to write the `.npz`. Defaults to the package's
            `assets/demo_mnist.npz`.

    Returns:
        The path written.
    """
    (x_train, y_train), _ = load_mnist(mnist_path)
    indices = mnist_digit_indices(y_train, DEMO_DIGIT, DEMO_N, seed=DEMO_SEED)
    originals = x_train[indices]
    images, matrices = perspective_perturbation(originals, DEMO_SIGMA, seed=DEMO_SEED)
    output = os.fspath(output or _asset_path())
    with atomic_file(output) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                images=images,
                originals=originals,
                matrices=matrices,
                indices=indices,
                digit=np.int64(DEMO_DIGIT),
                sigma=np.float64(DEMO_SIGMA),
                seed=np.int64(DEMO_SEED),
            )
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m keras_congeal.data.demo",
        description="Show, or regenerate, the built-in demo set.",
    )
    parser.add_argument(
        "--rebuild", action="store_true", help="regenerate the asset from MNIST"
    )
    parser.add_argument("--mnist", help="mnist.npz or its directory (with --rebuild)")
    parser.add_argument("--output", help="where to write (default: the package asset)")
    args = parser.parse_args(argv)
    if not args.rebuild and (args.mnist or args.output):
        parser.error("--mnist and --output go with --rebuild")
    if args.rebuild:
        try:
            path = build_demo(args.mnist, args.output)
        except FileNotFoundError as error:
            print(f"{parser.prog}: error: {error}", file=sys.stderr)
            return 2
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
        return 0
    demo = load_demo()
    for key, value in demo.items():
        shown = value if key == "description" else f"{value.shape} {value.dtype}"
        print(f"{key}: {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
