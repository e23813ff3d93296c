"""Congeal a very large synthetic set: up to 1,000,000 infiMNIST-like digits.

The paper's Sec. 3.4 aligns 1,000,000 infiMNIST digits per class. This script
generates N infiMNIST-like (or affNIST-like, or perspective-perturbed) images of
one digit with `keras_congeal.data`, trains the default `Congealer` for a few
epochs with lazily read batches, aligns the whole set in chunks and reports
APSNR before/after with the ink kept and the content scale, all streamed.
Meant for a GPU (JAX backend); runs anywhere with a smaller `--n`.

Usage:
    python -m benchmarks.million --digit 3 --n 1000000 --protocol infimnist \
        --epochs 2 --batch-size 1024 --output million.json
"""

import argparse
import json
import os
import platform
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--protocol", choices=["infimnist", "affnist", "perspective"],
                        default="infimnist")
    parser.add_argument("--sigma", type=float, default=0.2, help="for --protocol perspective")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist", default=None, help="mnist.npz (default: KERAS_CONGEAL_DATA)")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    args = parser.parse_args(argv)
    if args.n < 1 or args.epochs < 1:
        parser.error("--n and --epochs must be >= 1")

    import keras
    import numpy as np

    from keras_congeal.data import affnist_like, infimnist_like, perspective_perturbation
    from keras_congeal.data.mnist import load_mnist
    from keras_congeal.datasets import as_float_images
    from keras_congeal.metrics import AlignmentMeter
    from keras_congeal.training import CongealSettings, fit_congealer

    (x_train, y_train), _ = load_mnist(args.mnist)
    sources = x_train[y_train == args.digit]
    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(sources), size=args.n, replace=args.n > len(sources))

    start = time.time()
    if args.protocol == "infimnist":
        images, _ = infimnist_like(sources[picks], seed=args.seed)
    elif args.protocol == "affnist":
        images, _ = affnist_like(sources[picks], seed=args.seed)
    else:
        images, _ = perspective_perturbation(sources[picks], args.sigma, seed=args.seed)
    generate_seconds = time.time() - start
    print(f"generated {len(images)} {args.protocol} images {images.shape[1:]} in "
          f"{generate_seconds:.1f} s", flush=True)

    settings = CongealSettings(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    if args.learning_rate:
        settings = settings.replace(learning_rate=args.learning_rate)
    start = time.time()
    model, history = fit_congealer(images, settings, monitor_size=1000, verbose=2)
    train_seconds = time.time() - start

    start = time.time()
    meter = AlignmentMeter(data_range=1.0)
    chunk = 65536
    for first in range(0, len(images), chunk):
        batch = as_float_images(images[first:first + chunk])
        result = model.align(batch, batch_size=args.batch_size)
        meter.update(batch, result["aligned"], result["transforms"])
    align_seconds = time.time() - start
    summary = meter.summary()

    report = {
        "protocol": args.protocol, "digit": args.digit, "n": args.n,
        "image_shape": list(images.shape[1:]), "epochs": args.epochs,
        "batch_size": args.batch_size, "settings": settings.to_dict(),
        "generate_seconds": generate_seconds, "train_seconds": train_seconds,
        "train_images_per_second": args.epochs * args.n / train_seconds,
        "align_seconds": align_seconds, "align_images_per_second": args.n / align_seconds,
        **summary,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
        "backend": keras.backend.backend(), "keras": keras.__version__,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs",
        "command": "python -m benchmarks.million " + " ".join(sys.argv[1:] if argv is None
                                                                else argv),
    }
    print(f"APSNR {summary['apsnr_before']:.2f} -> {summary['apsnr_after']:.2f} dB, "
          f"ink kept {summary['ink_kept']:.2f}, content scale "
          f"{summary['content_scale_median']:.2f}; train {train_seconds:.1f} s "
          f"({report['train_images_per_second']:.0f} img/s), align {align_seconds:.1f} s "
          f"({report['align_images_per_second']:.0f} img/s)", flush=True)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
