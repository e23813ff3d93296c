"""Runs one baseline on a stack of images and prints its measures as JSON.

Usage (from the repository root):

    python -m benchmarks.baselines rasl --images perturbed.npy
    python -m benchmarks.baselines rasl --images set.npz --key perturbed --transform affine
    python -m benchmarks.baselines lsc --images perturbed.npy --transform affine \\
        --output lsc_result.npz

`--images` is a `.npy` array (N, H, W) or a `.npz` archive (pick the array
with `--key`); `--limit N` keeps the first N images. Printed: the method and
its settings, the number of images and of kept images, seconds, iterations,
APSNR before and after (all images; and over the kept images only), the ink
kept (sum aligned / sum input) and the median content scale. `--output`
saves `aligned`, `transforms` and `kept_mask` to a `.npz` file.

Nothing here reads a fixed data path: make the perturbed set first (for
example with `python -m keras_congeal.data mnist ...`).
"""

import argparse
import json

import numpy as np

from benchmarks.baselines._common import apsnr, content_scale, infer_data_range, ink_kept
from benchmarks.baselines.lsc import TRANSFORMS as LSC_TRANSFORMS
from benchmarks.baselines.lsc import run_lsc
from benchmarks.baselines.rasl_baseline import TRANSFORMS as RASL_TRANSFORMS
from benchmarks.baselines.rasl_baseline import run_rasl

DEFAULT_TRANSFORM = {"rasl": "euclidean", "lsc": "affine"}


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines",
        description="Run RASL or least-squares congealing on an image stack.",
    )
    parser.add_argument("method", choices=("rasl", "lsc"))
    parser.add_argument("--images", required=True, help=".npy (N, H, W) or .npz archive")
    parser.add_argument("--key", help="array name inside a .npz archive")
    parser.add_argument("--limit", type=int, help="use the first LIMIT images")
    parser.add_argument("--transform", help="default: euclidean (rasl), affine (lsc)")
    parser.add_argument("--data-range", type=float,
                        help="value of white (default: 255 for integers or floats > 1, else 1)")
    parser.add_argument("--output", help="save aligned, transforms, kept_mask (.npz)")
    rasl = parser.add_argument_group("rasl")
    rasl.add_argument("--stop-delta", type=float, default=0.005)
    rasl.add_argument("--max-iter", type=int, default=1000)
    rasl.add_argument("--min-ink", type=float, default=1.0)
    rasl.add_argument("--resample", choices=("rasl", "bilinear"), default="rasl")
    lsc = parser.add_argument_group("lsc")
    lsc.add_argument("--iterations", type=int, default=50)
    lsc.add_argument("--reference", default=None,
                     help="image index, 'closest-to-mean' (default) or 'mean'")
    lsc.add_argument("--rounds", type=int, default=1)
    lsc.add_argument("--update-reference", action="store_true")
    return parser


def _load(path, key):
    data = np.load(path)
    if isinstance(data, np.lib.npyio.NpzFile):
        if key is None:
            raise ValueError(f"{path} is an archive: name the array with --key ({data.files}).")
        return data[key]
    return data


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    transform = args.transform or DEFAULT_TRANSFORM[args.method]
    allowed = RASL_TRANSFORMS if args.method == "rasl" else tuple(LSC_TRANSFORMS)
    if transform not in allowed:
        parser.error(f"--transform {transform!r} is not one of {allowed} for {args.method}.")
    try:
        images = _load(args.images, args.key)
    except (OSError, ValueError, KeyError) as error:
        parser.error(str(error))
    if args.limit is not None:
        images = images[: args.limit]
    data_range = args.data_range or infer_data_range(images)

    if args.method == "rasl":
        settings = {"stop_delta": args.stop_delta, "max_iter": args.max_iter,
                    "min_ink": args.min_ink, "resample": args.resample}
        result = run_rasl(images, transform=transform, data_range=data_range, **settings)
    else:
        reference = args.reference
        if reference is not None and reference.lstrip("-").isdigit():
            reference = int(reference)
        settings = {"iterations": args.iterations, "reference": reference,
                    "rounds": args.rounds, "update_reference": args.update_reference}
        result = run_lsc(images, transform=transform, **settings)

    kept = result["kept_mask"]
    aligned = result["aligned"]
    scales = content_scale(result["transforms"][kept], aligned.shape[1:3])
    summary = {
        "method": args.method,
        "transform": transform,
        **settings,
        "images": int(len(images)),
        "kept": int(kept.sum()),
        "seconds": round(result["seconds"], 3),
        "iterations": result["iterations"],
        "apsnr_before": round(apsnr(images, data_range), 3),
        "apsnr_after": round(apsnr(aligned, data_range), 3),
        "apsnr_before_kept": round(apsnr(images[kept], data_range), 3),
        "apsnr_after_kept": round(apsnr(aligned[kept], data_range), 3),
        "ink_kept": round(ink_kept(images, aligned), 4),
        "content_scale_median": round(float(np.median(scales)), 4),
        "max_rss_mb": round(result["max_rss_bytes"] / 2**20, 1),
    }
    if args.method == "rasl":
        summary["guards"] = result["info"]["guards"]
    print(json.dumps(summary))
    if args.output:
        np.savez(args.output, aligned=aligned, transforms=result["transforms"], kept_mask=kept)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
