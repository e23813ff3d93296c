"""Long trainings compared by optimizer: loss spikes, collapses and the final alignment.

At N = 6000 (2,813 steps, the full MNIST protocol) a few keras_congeal runs
blow up: an epoch's mean loss jumps 7-60x and the monitored sample loses most
of its ink (the collapse guard of `fit_congealer` then restores the last
healthy epoch). This trains the default `Congealer` on the full protocol's
cells (the same perturbed digits as `benchmarks.mnist_protocols --full`) with
the default optimizer and with variants of it, and records for each run the
per-epoch history, the number of loss spikes (epochs whose mean loss exceeds
`--spike-ratio` times the lowest epoch mean before it), whether the guard
stopped it, and APSNR, ink kept and median content scale of the whole set.

Optimizers (`--optimizers`): `adam` (Adam(1e-3), constant: the default until
`CongealSettings.learning_rate_schedule` became `"cosine"`), `adam-beta2-0.99`
(a second-moment average that forgets faster: a gradient after a calm stretch
moves a weight by about one learning rate instead of three), `amsgrad` (the
second moment never decreases), `adam-cosine` (the learning rate decays along a
cosine to a tenth by the last step: today's default).

Each (digit, sigma, optimizer, training seed) is one JSON file in `--output-dir`, written
atomically when its run ends; files already there are skipped, so processes
side by side (one per run, on one GPU) share a folder, and a killed run
starts again where it stopped. `--report` tables the folder.

Usage:

    python -m benchmarks.stability --digits 5 7 --sigmas 0.2 --optimizers adam amsgrad \\
        --output-dir results/stability
    python -m benchmarks.stability --report --output-dir results/stability
"""

import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import common

SCHEMA = "keras_congeal.stability/1"
OPTIMIZERS = ("adam", "adam-beta2-0.99", "amsgrad", "adam-cosine")


def make_optimizer(name, learning_rate, steps):
    """The Keras optimizer `name` (see `OPTIMIZERS`) for a run of `steps` steps."""
    import keras

    from keras_congeal.training import CongealSettings, schedule_learning_rate

    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adam-beta2-0.99":
        return keras.optimizers.Adam(learning_rate, beta_2=0.99)
    if name == "amsgrad":
        return keras.optimizers.Adam(learning_rate, amsgrad=True)
    if name == "adam-cosine":  # the schedule fit_congealer gives by default
        optimizer = keras.optimizers.Adam(learning_rate)
        schedule_learning_rate(optimizer, CongealSettings(learning_rate_schedule="cosine"), steps)
        return optimizer
    raise ValueError(f"Unknown optimizer {name!r}: expected one of {OPTIMIZERS}.")


def loss_spikes(losses, ratio):
    """Epochs (0-based) whose mean loss exceeds `ratio` times the lowest
    epoch mean before them."""
    spikes, lowest = [], float("inf")
    for epoch, loss in enumerate(losses):
        if loss > ratio * lowest:
            spikes.append(epoch)
        lowest = min(lowest, loss)
    return spikes


def entry_path(output_dir, digit, sigma, optimizer, train_seed):
    name = f"digit{digit}_sigma{sigma:g}_{optimizer}_seed{train_seed}.json"
    return Path(output_dir) / name


def run_one(digit, sigma, optimizer, train_seed, args, originals):
    """Trains one run and returns its JSON entry."""
    import keras

    from benchmarks.mnist_protocols import cell_seed
    from keras_congeal.data import perspective_perturbation
    from keras_congeal.reference import choose_reference
    from keras_congeal.training import CongealSettings, build_congealer, fit_congealer

    perturbed, _ = perspective_perturbation(originals, sigma, seed=cell_seed(args.seed, digit,
                                                                              sigma))
    x = perturbed.astype("float32") / 255.0
    # The optimizer below is the run's whole optimisation: no schedule added.
    settings = CongealSettings(learning_rate_schedule="constant", seed=train_seed)
    if args.epochs is not None:
        settings = settings.replace(epochs=args.epochs)
    steps = settings.epochs_for(len(x)) * -(-len(x) // settings.batch_size)
    keras.utils.set_random_seed(settings.seed)
    reference, _ = choose_reference(x[..., None], settings.reference, data_range=1.0,
                                    seed=settings.seed)
    model = build_congealer(settings, reference)
    model.compile(optimizer=make_optimizer(optimizer, settings.learning_rate, steps),
                  jit_compile="auto")
    start = time.perf_counter()
    model, history = fit_congealer(x, settings, model=model, verbose=0)
    seconds = time.perf_counter() - start
    history = {k: [float(v) for v in values] for k, values in history.history.items()}
    result = model.align(x[..., None])
    measures = common.alignment_measures(x, result["aligned"], result["transforms"])
    keras.backend.clear_session()
    spikes = loss_spikes(history["loss"], args.spike_ratio)
    monitored_ink = history.get("ink_kept", [])
    return {
        "digit": digit,
        "sigma": sigma,
        "optimizer": optimizer,
        "train_seed": train_seed,
        "n": len(x),
        "steps_planned": steps,
        "epochs_run": len(history["loss"]),
        "epochs_planned": settings.epochs_for(len(x)),
        "guard_stopped": len(history["loss"]) < settings.epochs_for(len(x)),
        "loss_spikes": spikes,
        "lowest_monitored_ink": min(monitored_ink) if monitored_ink else None,
        "fit_seconds": seconds,
        **{k: v for k, v in measures.items() if not k.startswith("_")},
        "history": history,
    }


def report(output_dir):
    """A markdown table of every run in `output_dir`, and one line per optimizer."""
    entries = [common.read_json(p) for p in sorted(Path(output_dir).glob("digit*.json"))]
    entries = [e for e in entries if e.get("schema") == SCHEMA]
    if not entries:
        return f"no runs in {output_dir}"
    rows = [
        [e["digit"], f"{e['sigma']:g}", e["optimizer"], e.get("train_seed", 0),
         common.fmt(e["apsnr"]),
         common.fmt(e["ink_kept"]), common.fmt(e["content_scale_median"]),
         f"{e['epochs_run']}/{e['epochs_planned']}", len(e["loss_spikes"]),
         common.fmt(e["lowest_monitored_ink"])]
        for e in sorted(entries, key=lambda e: (e["digit"], e["sigma"], e["optimizer"],
                                                e.get("train_seed", 0)))
    ]
    lines = [common.markdown_table(
        ["digit", "sigma", "optimizer", "seed", "APSNR dB", "ink kept", "scale", "epochs (guard)",
         "loss spikes", "lowest sample ink"], rows), ""]
    for name in OPTIMIZERS:
        runs = [e for e in entries if e["optimizer"] == name]
        if runs:
            lines.append(
                f"{name}: {len(runs)} runs, mean APSNR {np.mean([e['apsnr'] for e in runs]):.2f}"
                f" dB, ink {np.mean([e['ink_kept'] for e in runs]):.2f}, loss spikes "
                f"{sum(len(e['loss_spikes']) for e in runs)}, stopped by the guard "
                f"{sum(e['guard_stopped'] for e in runs)}, sample ink below 0.5 in "
                f"{sum((e['lowest_monitored_ink'] or 1) < 0.5 for e in runs)}")
    return "\n".join(lines)


def main(argv=None):
    parser = common.script_parser("benchmarks.stability", __doc__)
    parser.add_argument("--digits", type=int, nargs="+", default=[5, 7])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[0.2])
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=["adam"])
    parser.add_argument("--n", type=int, default=6000, help="images per digit (default 6000)")
    parser.add_argument("--epochs", type=int, help="default: CongealSettings' own")
    parser.add_argument("--seed", type=int, default=0, help="subset and perturbation seed")
    parser.add_argument("--train-seeds", type=int, nargs="+", default=[0],
                        help="training seeds (initial weights, batch order): one run each")
    parser.add_argument("--spike-ratio", type=float, default=1.25)
    parser.add_argument("--mnist", help="mnist.npz or its folder")
    parser.add_argument("--output-dir", default="benchmarks/results/stability")
    parser.add_argument("--report", action="store_true", help="only table the folder")
    args = parser.parse_args(argv)
    if args.report:
        print(report(args.output_dir))
        return 0
    try:
        mnist = common.resolve_mnist(args.mnist)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    from benchmarks.mnist_protocols import MNIST_SPLIT
    from keras_congeal.data import mnist_digit_subset

    run = common.run_record(argv, module="benchmarks.stability")
    for digit in args.digits:
        originals = mnist_digit_subset(digit, args.n, seed=args.seed, split=MNIST_SPLIT,
                                       path=mnist)
        runs = [(s, o, t) for s in args.sigmas for o in args.optimizers for t in args.train_seeds]
        for sigma, optimizer, train_seed in runs:
            path = entry_path(args.output_dir, digit, sigma, optimizer, train_seed)
            if path.exists():
                common.log(f"{path.name}: done, skipped")
                continue
            common.log(f"digit {digit} sigma {sigma:g} {optimizer} seed {train_seed}: "
                       "training")
            entry = run_one(digit, sigma, optimizer, train_seed, args, originals)
            common.write_json_atomic(path, {"schema": SCHEMA, "run": run, **entry})
            common.log(f"{path.name}: APSNR {entry['apsnr']:.2f} dB, ink "
                       f"{entry['ink_kept']:.2f}, {len(entry['loss_spikes'])} loss spikes, "
                       f"{entry['epochs_run']}/{entry['epochs_planned']} epochs")
    print(report(args.output_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
