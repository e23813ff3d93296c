"""The paper's MNIST protocols (Figs. 4-6): every method on the same perturbed digits.

For each digit and perspective-perturbation sigma (the IC-STN protocol of
`keras_congeal.data.perspective_perturbation`), the same N images are aligned
by every method, and each result reports APSNR (Eq. 9) beside the two
degenerate-solution measures (ink kept, median content scale), the seconds
taken and, for RASL, how many images it kept:

* `input`: no alignment (the perturbed set);
* `oracle`: the perturbation undone with its true inverse (what perfect
  alignment to the unperturbed digits scores; ink pushed out of the frame by
  the perturbation is lost);
* `rasl-euclidean`, `rasl-affine`: RASL (`benchmarks.baselines.run_rasl`;
  Euclidean is its README's advice for digits);
* `lsc-affine`: least-squares congealing (`benchmarks.baselines.run_lsc`);
* `kc-D+C`, `kc-D`, `kc-C`: keras_congeal with `CongealSettings()` defaults,
  changing only `objective` (the ablation of the paper's Sec. 3.2).

Results go to `<output-dir>/mnist_protocols_<mode>.json` after every finished
(digit, sigma, method) entry, written atomically; `--resume` skips entries
already there. Mean and variance images go to `..._images.npz`, the panels
(like the paper's Figs. 4-6) to `..._sigma<s>.png`, and the tables to
`..._tables.md`.

Usage:

    # The quick protocol on a CPU budget: two digits, N = 1000.
    python -m benchmarks.mnist_protocols --quick --digits 3 8 --sigmas 0.1 0.2 0.3

    # The paper's full protocol (GPU for keras_congeal; RASL takes hours):
    python -m benchmarks.mnist_protocols --full --resume

    # Only some methods, then rebuild the figures and tables from the JSON:
    python -m benchmarks.mnist_protocols --quick --methods input oracle kc-D+C --resume
    python -m benchmarks.mnist_protocols --quick --report-only
"""

import hashlib
import time

import numpy as np

from benchmarks import common, protocol
from keras_congeal.constants import LEARNING_RATE_SCHEDULES

SCHEMA = "keras_congeal.mnist_protocols/1"
METHODS = (
    "input",
    "oracle",
    "rasl-euclidean",
    "rasl-affine",
    "lsc-affine",
    "kc-D+C",
    "kc-D",
    "kc-C",
)
MODES = {
    "quick": {"n": 1000, "digits": list(range(10)), "sigmas": [0.0, 0.1, 0.2, 0.3]},
    "full": {"n": 6000, "digits": list(range(10)), "sigmas": [0.0, 0.1, 0.2, 0.3]},
}
# The digits' images: the training set's, then test images for a digit with
# fewer than N training images (N = 6000: 0, 2, 4, 5, 6, 8 and 9).
MNIST_SPLIT = "train+test"
# An entry keeping less of the ink than this is marked erased in the tables.
ERASED_INK = 0.5
# Which entry keys the figures show, in order.
LABELS = {
    "input": "input",
    "oracle": "oracle",
    "rasl-euclidean": "RASL eucl.",
    "rasl-affine": "RASL affine",
    "lsc-affine": "LSC affine",
    "kc-D+C": "KC D+C",
    "kc-D": "KC D",
    "kc-C": "KC C",
}


def entry_key(digit, sigma, method):
    return f"digit{digit}/sigma{sigma:g}/{method}"


def cell_seed(seed, digit, sigma):
    """Seed of one cell's perturbation: independent draws per digit and sigma."""
    return int(seed) * 100_000 + 1000 * int(digit) + int(round(100 * sigma))


# === Methods ===


def _run_input(x, matrices, args):
    return {
        "aligned": x,
        "transforms": np.tile(np.eye(3), (len(x), 1, 1)),
        "mask": None,
        "extra": {},
    }


def _run_oracle(x, matrices, args):
    from keras_congeal.data import oracle_align

    return {
        "aligned": oracle_align(x, matrices),
        "transforms": np.linalg.inv(matrices),
        "mask": None,
        "extra": {},
    }


def _run_rasl(transform):
    def run(x, matrices, args):
        from benchmarks.baselines import run_rasl

        result = run_rasl(
            x,
            transform=transform,
            max_iter=args.rasl_max_iter,
            stop_delta=args.rasl_stop_delta,
            data_range=1.0,
            resample="bilinear",
        )
        info = result["info"]
        return {
            "aligned": result["aligned"],
            "transforms": result["transforms"],
            "mask": result["kept_mask"],
            "extra": {
                "iterations": result["iterations"],
                "capped": result["iterations"] >= args.rasl_max_iter,
                "guards": info["guards"],
                "num_kept": info["num_kept"],
                "settings": {
                    k: info[k]
                    for k in ("transform", "stop_delta", "max_iter", "min_ink", "resample")
                },
                "note": "APSNR, ink and scale over the kept images only (RASL drops images "
                "whose ink sum < 1, i.e. perturbed out of the frame); apsnr_all "
                "counts the dropped images unaligned.",
            },
        }

    return run


def _run_lsc(x, matrices, args):
    from benchmarks.baselines import run_lsc

    result = run_lsc(x, transform="affine")
    return {
        "aligned": result["aligned"],
        "transforms": result["transforms"],
        "mask": None,
        "extra": {
            "iterations": result["iterations"],
            "reference_index": result["info"].get("reference_index"),
        },
    }


def _run_congealer(objective):
    def run(x, matrices, args):
        import keras

        from keras_congeal.training import fit_congealer

        settings = _settings(args).replace(objective=objective)
        start = time.perf_counter()
        model, history = fit_congealer(x, settings, verbose=0)
        fit_seconds = time.perf_counter() - start
        result = model.align(x[..., None])
        history = {k: [float(v) for v in values] for k, values in history.history.items()}
        reference = np.asarray(keras.ops.convert_to_numpy(model.reference))[..., 0]
        keras.backend.clear_session()
        return {
            "aligned": result["aligned"][..., 0],
            "transforms": result["transforms"],
            "mask": None,
            "reference": reference,
            "extra": {
                "reference_index": _index_of(x, reference),
                "settings": settings.to_dict(),
                "fit_seconds": fit_seconds,
                "train_images_per_second": settings.epochs * len(x) / fit_seconds,
                "history": history,
                "note": "history: per epoch losses, and APSNR/ink/scale of a fixed "
                "512-image sample (fit_congealer's AlignmentMonitor)",
            },
        }

    return run


def _index_of(images, image):
    """Index of the image of `images` closest to `image` (the reference's)."""
    return int(np.argmin(np.abs(images - image[None]).reshape(len(images), -1).sum(axis=1)))


RUNNERS = {
    "input": _run_input,
    "oracle": _run_oracle,
    "rasl-euclidean": _run_rasl("euclidean"),
    "rasl-affine": _run_rasl("affine"),
    "lsc-affine": _run_lsc,
    "kc-D+C": _run_congealer("D+C"),
    "kc-D": _run_congealer("D"),
    "kc-C": _run_congealer("C"),
}


def _settings(args):
    from keras_congeal.training import CongealSettings

    settings = CongealSettings()
    if args.epochs is not None:
        settings = settings.replace(epochs=args.epochs)
    if args.learning_rate_schedule is not None:
        settings = settings.replace(learning_rate_schedule=args.learning_rate_schedule)
    return settings


# === Report ===


# The measures of `summary_rows`, averaged over the digits.
_AVERAGED = ("apsnr", "ink_kept", "content_scale_median", "seconds", "images_kept", "images")


def summary_rows(results, sigmas, methods):
    """Per (sigma, method): values averaged over the digits that have the entry."""
    rows = []
    for sigma in sigmas:
        for method in methods:
            entries = [
                e
                for e in results.values()
                if e["method"] == method and abs(e["sigma"] - sigma) < 1e-9
            ]
            if not entries:
                continue
            failed = [e for e in entries if e.get("status", "ok") != "ok"]
            entries = [e for e in entries if e.get("status", "ok") == "ok"]
            if not entries:
                rows.append(
                    {
                        "sigma": sigma,
                        "method": method,
                        "digits": [],
                        "failed": len(failed),
                        **dict.fromkeys(_AVERAGED),
                        "capped": False,
                    }
                )
                continue
            rows.append(
                {
                    "sigma": sigma,
                    "method": method,
                    "digits": sorted(e["digit"] for e in entries),
                    **{name: protocol.mean_of([e[name] for e in entries]) for name in _AVERAGED},
                    "capped": any(e.get("capped") for e in entries),
                    "failed": len(failed),
                    "erased": sum(
                        e["ink_kept"] is not None and e["ink_kept"] < ERASED_INK for e in entries
                    ),
                    "not_finite": sum(not np.isfinite(float(e["apsnr"])) for e in entries),
                }
            )
    return rows


def tables(results, methods):
    """The markdown tables: averaged over digits, then digit by digit."""
    sigmas = sorted({e["sigma"] for e in results.values()})
    digits = sorted({e["digit"] for e in results.values()})
    rows = []
    for r in summary_rows(results, sigmas, methods):
        mark = "*" if r["method"].startswith("rasl") else ""
        mark += " (capped)" if r["capped"] else ""
        mark += f" ({r['failed']} failed)" if r["failed"] else ""
        mark += f" ({r['erased']} erased)" if r.get("erased") else ""
        mark += f" ({r['not_finite']} inf, not averaged)" if r.get("not_finite") else ""
        rows.append(
            [
                f"{r['sigma']:g}",
                r["method"],
                " ".join(map(str, r["digits"])),
                common.fmt(r["apsnr"]) + mark,
                common.fmt(r["ink_kept"]),
                common.fmt(r["content_scale_median"]),
                f"{common.fmt(r['images_kept'], 0)}/{common.fmt(r['images'], 0)}",
                common.fmt(r["seconds"], 1),
            ]
        )
    text = [
        "### Averaged over digits",
        "",
        common.markdown_table(
            ["sigma", "method", "digits", "APSNR dB", "ink kept", "scale", "kept/N", "seconds"],
            rows,
        ),
    ]
    for sigma in sigmas:
        body = []
        for method in methods:
            cells = []
            for digit in digits:
                e = results.get(entry_key(digit, sigma, method))
                if e is None:
                    cells.append("-")
                elif e.get("status", "ok") != "ok":
                    cells.append("failed")
                else:
                    cells.append(
                        f"{common.fmt(e['apsnr'])} ({common.fmt(e['ink_kept'])}, "
                        f"{common.fmt(e['content_scale_median'])})"
                    )
            if any(c != "-" for c in cells):
                body.append([method, *cells])
        text += [
            "",
            f"### sigma = {sigma:g}, digit by digit: APSNR dB (ink kept, scale)",
            "",
            common.markdown_table(["method", *map(str, digits)], body),
        ]
    text += [
        "",
        "`*` RASL: over the images it kept (it drops images perturbed out of the "
        "frame; see kept/N). `(capped)`: RASL stopped at --rasl-max-iter before its own "
        "stopping rule. `failed`: the method raised (the JSON entry's `status` says "
        f"what). `erased`: entries that kept less than {ERASED_INK:g} of the ink (the "
        "degenerate solution: content shrunk or warped out of the frame; their APSNR "
        "means nothing). `inf`: an all-black result (APSNR infinite), left out of the "
        "average. scale: median content scale (1 = unchanged, < 1 = shrunk).",
    ]
    return "\n".join(text)


def plot_panels(results, images, out_prefix, methods):
    """One PNG per sigma like the paper's Figs. 4-5: rows = digits, and for
    each method a mean and a variance column with its APSNR; plus an ablation
    PNG of variances (input, D, C, D+C) like Fig. 6. Returns the paths."""
    plt = protocol.pyplot()
    if plt is None:
        return []
    paths = []
    sigmas = sorted({e["sigma"] for e in results.values()})
    digits = sorted({e["digit"] for e in results.values()})
    ablation = [m for m in ("input", "kc-D", "kc-C", "kc-D+C") if m in methods]
    for sigma in sigmas:
        panels = (("", methods, ("mean", "var")), ("_ablation", ablation, ("var",)))
        for name, shown, kinds in panels:
            shown = [m for m in shown if any(entry_key(d, sigma, m) in results for d in digits)]
            if not shown or (name and len(shown) < 2):
                continue
            has_reference = any(f"digit{d}/sigma{sigma:g}/kc-reference" in images for d in digits)
            cols = len(shown) * len(kinds) + int(has_reference)
            fig, axes = plt.subplots(
                len(digits),
                cols,
                squeeze=False,
                figsize=(0.8 * cols + 0.2, 0.95 * len(digits) + 0.8),
            )
            for i, digit in enumerate(digits):
                # One variance scale per row, so that the methods compare.
                vmax = (
                    max(
                        (
                            float(images[f"{entry_key(digit, sigma, m)}/var"].max())
                            for m in shown
                            if f"{entry_key(digit, sigma, m)}/var" in images
                        ),
                        default=1.0,
                    )
                    or 1.0
                )
                for j, method in enumerate(shown):
                    key = entry_key(digit, sigma, method)
                    for k, kind in enumerate(kinds):
                        ax = axes[i, j * len(kinds) + k]
                        ax.set_xticks([])
                        ax.set_yticks([])
                        if i == 0 and k == 0:
                            ax.text(
                                0.5 * len(kinds),
                                1.25,
                                LABELS.get(method, method),
                                transform=ax.transAxes,
                                ha="center",
                                va="bottom",
                                fontsize=6,
                                weight="bold",
                            )
                        if f"{key}/{kind}" not in images:
                            ax.set_axis_off()
                            continue
                        ax.imshow(
                            images[f"{key}/{kind}"],
                            cmap="gray",
                            vmin=0,
                            vmax=1 if kind == "mean" else vmax,
                        )
                        if k == 0:
                            apsnr = common.fmt(results[key]["apsnr"], 1)
                            ax.set_title(f"{apsnr} dB", fontsize=6, pad=1)
                if has_reference:
                    ax = axes[i, -1]
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if i == 0:
                        ax.text(
                            0.5,
                            1.25,
                            "KC reference",
                            transform=ax.transAxes,
                            ha="center",
                            va="bottom",
                            fontsize=6,
                            weight="bold",
                        )
                    reference = images.get(f"digit{digit}/sigma{sigma:g}/kc-reference")
                    if reference is None:
                        ax.set_axis_off()
                    else:
                        ax.imshow(reference, cmap="gray", vmin=0, vmax=1)
            what = "variance" if name else "mean | variance"
            fig.text(
                0.5,
                0.995,
                f"perspective sigma {sigma:g}: {what} per method, one row per digit (APSNR above)",
                ha="center",
                va="top",
                fontsize=7,
            )
            fig.subplots_adjust(
                left=0.01,
                right=0.99,
                bottom=0.01,
                top=1 - 0.75 / fig.get_figheight(),
                wspace=0.05,
                hspace=0.3,
            )
            path = f"{out_prefix}_sigma{sigma:g}{name}.png"
            paths.append(protocol.save_figure(plt, fig, path, dpi=130))
    return paths


# === The protocol ===


class MnistProtocols(protocol.Protocol):
    """Cells (digit, sigma): every method on the same perturbed digits."""

    module = "benchmarks.mnist_protocols"
    schema = SCHEMA
    methods = METHODS
    images_suffix = "_images"
    data_name = "MNIST"
    record_failures = True
    epochs_help = (
        "keras_congeal epochs (default: CongealSettings' own; a smaller value is "
        "recorded in the JSON's config)"
    )
    rasl_stop_delta_help = "RASL stopping threshold (default 0.005, its digit example)"
    measures = {
        "apsnr": "Eq. 9 on the 0..255 scale over the aligned set (RASL: kept images only)",
        "apsnr_all": "Eq. 9 over all N images (RASL's dropped images unaligned)",
        "ink_kept": "sum(aligned) / sum(perturbed input) over the (kept) set",
        "content_scale_median": "median of 1/sqrt|det J| of the src_from_dst transforms at "
        "the image centre (metrics.content_scale); < 1 = shrunk",
        "seconds": "wall clock of the method on this machine (keras_congeal: fit + align)",
    }
    tables = staticmethod(tables)
    plot_panels = staticmethod(plot_panels)

    def add_arguments(self, parser):
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument(
            "--quick",
            action="store_const",
            const="quick",
            dest="mode",
            help="N = 1000 per digit (CPU budget)",
        )
        mode.add_argument(
            "--full",
            action="store_const",
            const="full",
            dest="mode",
            help="N = 6000 per digit (the paper's)",
        )
        parser.add_argument("--digits", type=int, nargs="+", help="digits (default: 0-9)")
        parser.add_argument(
            "--sigmas", type=float, nargs="+", help="perturbation sigmas (default: 0 0.1 0.2 0.3)"
        )
        parser.add_argument(
            "--n", type=int, help="images per digit (default: 1000 quick, 6000 full)"
        )
        parser.add_argument("--seed", type=int, default=0, help="subset and perturbation seed")
        parser.add_argument(
            "--learning-rate-schedule",
            choices=LEARNING_RATE_SCHEDULES,
            help="keras_congeal's (default: CongealSettings' own, cosine; the committed "
            "tables trained with constant, which their files need to --resume)",
        )
        parser.add_argument(
            "--mnist",
            default=None,
            help="mnist.npz or its folder (default: $KERAS_CONGEAL_DATA, then ../shared/data)",
        )

    def check_arguments(self, args, parser):
        mode = MODES[args.mode]
        args.digits = args.digits if args.digits is not None else mode["digits"]
        args.sigmas = args.sigmas if args.sigmas is not None else mode["sigmas"]
        args.n = args.n if args.n is not None else mode["n"]
        if any(not 0 <= d <= 9 for d in args.digits):
            parser.error(f"--digits must be in 0..9, received {args.digits}")
        if any(not 0 <= s < 1 for s in args.sigmas):
            parser.error(f"--sigmas must be in [0, 1), received {args.sigmas}")
        if args.n < 2:
            parser.error("--n must be at least 2")

    def name(self, args):
        return f"mnist_protocols_{args.mode}"

    def open_data(self, args):
        return common.resolve_mnist(args.mnist)

    def config(self, args):
        return {
            "mode": args.mode,
            "n": args.n,
            "seed": args.seed,
            "mnist_split": MNIST_SPLIT,
            "congeal_settings": _settings(args).to_dict(),
            "congeal_epochs_overridden": args.epochs is not None,
            # RASL's iteration cap is per entry (`max_iter`, `capped`): a later
            # --resume may run RASL with another cap.
            "rasl": {
                "stop_delta": args.rasl_stop_delta,
                "resample": "bilinear",
                "min_ink": 1.0,
                "blas_threads": 1,
            },
            "lsc": {"transform": "affine", "defaults": "run_lsc defaults"},
        }

    def read_config(self, config):
        # Files written before "mnist_split" took training images only, as
        # this rule does for every N they could run.
        return {"mnist_split": MNIST_SPLIT, **protocol.read_congeal_config(config)}

    def run_fields(self, args, data):
        return {"digits": args.digits, "sigmas": args.sigmas, "methods": args.methods}

    def cells(self, args, mnist, images):
        """The (digit, sigma) cells: the digit's subset, perturbed with the cell's seed."""
        from keras_congeal.data import mnist_digit_subset

        for digit in args.digits:
            originals = mnist_digit_subset(
                digit, args.n, seed=args.seed, split=MNIST_SPLIT, path=mnist
            )
            for sigma in args.sigmas:
                yield protocol.Cell(
                    name=f"digit {digit} sigma {sigma:g}",
                    key=lambda method, d=digit, s=sigma: entry_key(d, s, method),
                    prepare=lambda d=digit, s=sigma, o=originals: self._prepare(o, d, s, args),
                )

    def _prepare(self, originals, digit, sigma, args):
        """`(fields, inputs)` of one cell: the perturbed digits, in [0, 1]."""
        from keras_congeal.data import perspective_perturbation

        seed = cell_seed(args.seed, digit, sigma)
        perturbed, matrices = perspective_perturbation(originals, sigma, seed=seed)
        x = perturbed.astype("float32") / 255.0
        fields = {
            "digit": digit,
            "sigma": sigma,
            "n": len(x),
            "perturbation_seed": seed,
            "images_sha1": hashlib.sha1(perturbed.tobytes()).hexdigest(),
            "apsnr_unperturbed": common.alignment_measures(
                originals / 255.0, originals / 255.0, None
            )["apsnr"],
        }
        return fields, {"x": x, "matrices": matrices, "digit": digit, "sigma": sigma}

    def run_method(self, method, inputs, args):
        return RUNNERS[method](inputs["x"], inputs["matrices"], args)

    def measure(self, inputs, key, output):
        """APSNR, ink and scale of one output; its mean and variance images."""
        measures = common.alignment_measures(
            inputs["x"], output["aligned"], output["transforms"], output["mask"]
        )
        images = {f"{key}/mean": measures.pop("_mean"), f"{key}/var": measures.pop("_var")}
        if output.get("reference") is not None:
            # Every keras_congeal objective of a cell aligns to the same image.
            cell = f"digit{inputs['digit']}/sigma{inputs['sigma']:g}"
            images[f"{cell}/kc-reference"] = output["reference"]
        return measures, images

    def failed_measures(self, inputs):
        return {
            "apsnr": None,
            "ink_kept": None,
            "content_scale_median": None,
            "images": len(inputs["x"]),
            "images_kept": None,
        }

    def describe(self, e):
        return (
            f"digit {e['digit']} sigma {e['sigma']:g} {e['method']:15s} APSNR "
            f"{e['apsnr']:6.2f} dB  ink {e['ink_kept']:.2f}  scale "
            f"{common.fmt(e['content_scale_median'])}  kept {e['images_kept']}/"
            f"{e['images']}  {e['seconds']:7.1f} s"
        )


# `main(argv=None) -> int`: the command line.
main = MnistProtocols().main


if __name__ == "__main__":
    raise SystemExit(main())
