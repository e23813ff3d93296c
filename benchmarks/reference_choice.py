"""The reference `congeal` chooses, on the ten digits of the paper's MNIST protocol.

For each digit and sigma, N MNIST training images are perturbed (perspective
protocol, `keras_congeal.data.perspective_perturbation`) and the medoid
reference is chosen twice: with the earlier rule (typical ink only) and with
the current one (typical ink and whole content, `keras_congeal.reference`).
A reference is *damaged* when part of its digit was warped out of the frame:
its content, warped back by the true inverse perturbation, keeps less than
95% of the original's ink.

    python -m benchmarks.reference_choice                     # N 300, sigma 0.2 0.3
    python -m benchmarks.reference_choice --n 300 --sigmas 0.25 --output results/x

Writes OUTPUT.json (per digit and sigma: index, border ink, ink kept, damaged)
and OUTPUT.png (the references, earlier rule above, current rule below).
"""

import argparse
import contextlib
import os
import sys

import numpy as np

from benchmarks.common import RESULTS_DIR, resolve_mnist, run_record, write_json_atomic

DAMAGED_BELOW = 0.95


@contextlib.contextmanager
def _earlier_rule():
    """The rule before whole content counted: every image is 'whole'."""
    from keras_congeal import reference

    saved = reference.MAX_BORDER_INK
    reference.MAX_BORDER_INK = np.inf
    try:
        yield
    finally:
        reference.MAX_BORDER_INK = saved


def _choice(originals, perturbed, matrices, index):
    from keras_congeal.data import oracle_align
    from keras_congeal.reference import border_ink

    restored = oracle_align(perturbed[index:index + 1], matrices[index:index + 1])
    kept = float(restored.astype("float64").sum() / originals[index].astype("float64").sum())
    return {"index": int(index), "ink_kept": round(kept, 4),
            "border_ink": round(float(border_ink(perturbed[index:index + 1] / 255.0)[0]), 4),
            "damaged": kept < DAMAGED_BELOW}


def run(n, sigmas, mnist, seed=0):
    import warnings

    from keras_congeal.data import mnist_digit_subset, perspective_perturbation
    from keras_congeal.reference import ReferenceWarning, choose_reference

    cells, images = [], {}
    for sigma in sigmas:
        for digit in range(10):
            originals = mnist_digit_subset(digit, n, seed=seed, path=mnist)
            perturbed, matrices = perspective_perturbation(originals, sigma, seed=seed + digit)
            stack = perturbed[..., None]
            with _earlier_rule(), warnings.catch_warnings():
                warnings.simplefilter("ignore", ReferenceWarning)
                _, before = choose_reference(stack, "medoid", data_range=255.0, seed=seed)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", ReferenceWarning)
                _, after = choose_reference(stack, "medoid", data_range=255.0, seed=seed)
            cell = {"digit": digit, "sigma": sigma,
                    "earlier": _choice(originals, perturbed, matrices, before),
                    "current": _choice(originals, perturbed, matrices, after),
                    "warning": str(caught[0].message) if caught else None}
            cells.append(cell)
            images[(sigma, digit)] = (perturbed[before], perturbed[after])
            print(f"sigma {sigma:g} digit {digit}: earlier {cell['earlier']}, "
                  f"current {cell['current']}", flush=True)
    return cells, images


def figure(cells, images, path):
    from keras_congeal.figures import _grid, _labelled_blocks, _save

    blocks = []
    for sigma in sorted({c["sigma"] for c in cells}):
        row = [images[(sigma, d)] for d in range(10)]
        grid = _grid([b for b, _ in row] + [a for _, a in row], 255.0, 3, columns=10)
        damaged = [c for c in cells if c["sigma"] == sigma]
        label = (f"sigma {sigma:g}: earlier rule (top; damaged "
                 f"{sum(c['earlier']['damaged'] for c in damaged)}/10), whole content "
                 f"(bottom; damaged {sum(c['current']['damaged'] for c in damaged)}/10)")
        blocks.append((label, grid))
    canvases = [_labelled_blocks([block]) for block in blocks]
    from PIL import Image

    width = max(c.width for c in canvases)
    canvas = Image.new("RGB", (width, sum(c.height for c in canvases)), "white")
    y = 0
    for c in canvases:
        canvas.paste(c, (0, y))
        y += c.height
    _save(canvas, path)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.reference_choice",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="images per digit (default 300)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.2, 0.3])
    parser.add_argument("--mnist", help="mnist.npz (default: KERAS_CONGEAL_DATA or shared)")
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "reference_choice"),
                        help="path prefix of the .json and .png (default results/...)")
    args = parser.parse_args(argv)
    cells, images = run(args.n, args.sigmas, resolve_mnist(args.mnist))
    record = run_record(argv, module="benchmarks.reference_choice")
    write_json_atomic(f"{args.output}.json", {"run": record, "cells": cells,
                                              "damaged_below_ink_kept": DAMAGED_BELOW})
    figure(cells, images, f"{args.output}.png")
    for rule in ("earlier", "current"):
        print(f"{rule}: damaged references {sum(c[rule]['damaged'] for c in cells)}"
              f"/{len(cells)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
