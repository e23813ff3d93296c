"""Sweep of training settings on perturbed MNIST: which settings congeal best.

Trains one `Congealer` per setting on the same perturbed digits and reports,
every few epochs, APSNR with the two degenerate-solution measures beside it
(ink kept, content scale), against the input and the oracle (the synthetic
perturbation undone). Meant for the GPU (JAX backend) but runs anywhere.

Usage:
    python -m benchmarks.sweep --digits 3 8 --sigma 0.2 0.3 --epochs 30 \
        --configs paper paper-lr1e-3 default --output sweep.json
    python -m benchmarks.sweep --list
"""

import argparse
import json
import os
import sys
import time

CONFIGS = {
    # The paper's settings: D + C, lr 1e-5, no ink penalty.
    "paper": dict(lr=1e-5, ink_weight=0.0),
    "paper-lr1e-3": dict(lr=1e-3, ink_weight=0.0),
    "default": dict(),
    "affine": dict(transform="affine"),
    "similarity": dict(transform="similarity"),
    "compose": dict(fusion="compose"),
    "D-only": dict(objective="D"),
    "C-only": dict(objective="C"),
    "ink0.3": dict(ink_weight=0.3),
    "ink3": dict(ink_weight=3.0),
    "lr3e-4": dict(lr=3e-4),
    "lr3e-3": dict(lr=3e-3),
    "gamma0": dict(gamma=0.0),
    "gamma10": dict(gamma=10.0),
    "code8": dict(code_size=8),
    "code32": dict(code_size=32),
    "lam0.3": dict(lam=0.3),
    "lam3": dict(lam=3.0),
    "ref-mean": dict(reference="mean"),
    "batch256": dict(batch_size=256),
    "blur1": dict(distortion_blur=1.0),
    "blur2": dict(distortion_blur=2.0),
    "D-blur1": dict(objective="D", distortion_blur=1.0),
    "D-blur2": dict(objective="D", distortion_blur=2.0),
    "D-ink0": dict(objective="D", ink_weight=0.0),
    "D-mean": dict(objective="D", reference="mean"),
}
DEFAULTS = dict(lr=1e-3, ink_weight=1.0, transform="homography", fusion="additive",
                objective="D+C", gamma=1.0, code_size=16, lam=1.0, reference="medoid",
                batch_size=64, distortion_blur=0.0)


def run_one(images01, originals01, name, overrides, epochs, every, seed):
    import keras

    from keras_congeal.callbacks import AlignmentMonitor
    from keras_congeal.models import Congealer
    from keras_congeal.reference import choose_reference

    settings = {**DEFAULTS, **overrides}
    keras.utils.set_random_seed(seed)
    reference, index = choose_reference(images01, settings["reference"])
    model = Congealer.from_preset(
        "mnist", reference=reference, transform=settings["transform"],
        fusion=settings["fusion"], code_size=settings["code_size"], gamma=settings["gamma"],
        objective=settings["objective"], lam=settings["lam"],
        ink_weight=settings["ink_weight"], distortion_blur=settings["distortion_blur"],
    )
    model.compile(optimizer=keras.optimizers.Adam(settings["lr"]))
    monitor = AlignmentMonitor(images01, every=every, collapse_ink=0.0)
    start = time.time()
    model.fit(images01, batch_size=settings["batch_size"], epochs=epochs, shuffle=True,
              verbose=0, callbacks=[monitor])
    seconds = time.time() - start
    return {"name": name, "settings": settings, "reference_index": index,
            "seconds": seconds, "images_per_second": epochs * len(images01) / seconds,
            "history": monitor.history}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--digits", type=int, nargs="+", default=[3])
    parser.add_argument("--sigma", type=float, nargs="+", default=[0.2])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", nargs="+", default=["paper", "paper-lr1e-3", "default"])
    parser.add_argument("--mnist", default=None, help="mnist.npz (default: KERAS_CONGEAL_DATA)")
    parser.add_argument("--output", default=None, help="JSON file for the results")
    parser.add_argument("--list", action="store_true", help="list the settings and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, overrides in CONFIGS.items():
            print(f"{name:14s} {overrides}")
        return 0
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown configs {unknown}; see --list")

    from keras_congeal.data.mnist import mnist_digit_subset
    from keras_congeal.data.perturb import oracle_align, perspective_perturbation
    from keras_congeal.metrics import apsnr

    results = []
    for digit in args.digits:
        originals = mnist_digit_subset(digit, args.n, seed=args.seed, path=args.mnist)
        for sigma in args.sigma:
            perturbed, matrices = perspective_perturbation(originals, sigma, seed=args.seed)
            x = perturbed.astype("float32")[..., None] / 255.0
            oracle = oracle_align(x, matrices)
            base = {"digit": digit, "sigma": sigma, "n": args.n,
                    "apsnr_input": apsnr(x, 1.0), "apsnr_oracle": apsnr(oracle, 1.0),
                    "apsnr_unperturbed": apsnr(originals, 255.0),
                    "ink_oracle": float(oracle.sum() / x.sum())}
            print(f"\ndigit {digit} sigma {sigma}: input {base['apsnr_input']:.2f} dB, "
                  f"oracle {base['apsnr_oracle']:.2f} dB (ink {base['ink_oracle']:.2f}), "
                  f"unperturbed {base['apsnr_unperturbed']:.2f} dB", flush=True)
            for name in args.configs:
                r = run_one(x, originals, name, CONFIGS[name], args.epochs, args.every, args.seed)
                r.update(base)
                results.append(r)
                trail = "  ".join(f"e{h['epoch']}:{h['apsnr']:.2f}/{h['ink_kept']:.2f}/"
                                  f"{h['scale']:.2f}" for h in r["history"])
                print(f"  {name:14s} {r['images_per_second']:8.0f} img/s  {trail}", flush=True)
    if args.output:
        tmp = args.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(results, f, indent=1)
        os.replace(tmp, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
