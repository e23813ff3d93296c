"""The command line: `python -m keras_congeal` (installed as `keras-congeal`).

Usage:

    # The built-in demo set (1000 perturbed MNIST threes), offline:
    python -m keras_congeal congeal --output demo/

    # A .npy stack (N, H, W) or (N, H, W, C), uint8 or float in [0, 1]:
    keras-congeal congeal digits.npy --output runs/digits --epochs 30

    # An array of an .npz or an HDF5 dataset (read lazily), a folder of PNG/JPEG:
    keras-congeal congeal data.h5 --key train/images --output runs/train
    keras-congeal congeal faces/ --output runs/faces --transform affine

    # A quick try on the first 500 images, then the whole set:
    keras-congeal congeal big.h5 --key images --limit 500 --epochs 2 --output runs/try

    # Continue a run that was killed (same settings; the unfinished run is
    # in runs/digits.partial/):
    keras-congeal congeal digits.npy --output runs/digits --resume

    # Align new images with a trained model (no training):
    keras-congeal align runs/digits/model.keras new_digits.npy --output runs/new

The Keras backend is Keras's: set KERAS_BACKEND (tensorflow, jax, torch).

Outputs (in --output DIR, which appears only once complete):

    aligned.npy      the aligned images: same count, shape, dtype and value
                     range as the input (uint8 rounded; float -> float32)
    transforms.npy   float64 (N, 3, 3); matrix i maps a pixel (x, y, 1) of
                     aligned image i to the pixel of input image i it samples
    report.json      counts, APSNR before/after, ink kept, content scale,
                     timings, settings, per-epoch history (congeal)
    model.keras      the trained Congealer (congeal only)
    settings.json    the CongealSettings of the run (congeal only)
    filenames.json   the input file names, in order (folder input)
    mean_variance.png, samples.png, reference.png   figures

Exit status: 0 done; 1 bad input or output (one line on stderr, nothing
written); 2 bad arguments; 130 interrupted (congeal: --resume continues).
"""

import argparse
import contextlib
import dataclasses
import functools
import importlib.util
import os
import re
import sys
import tempfile

from keras_congeal.cli._parser import OneLineParser

__all__ = ["PROG", "SETTING_FLAGS", "build_parser", "main"]

PROG = "keras-congeal"

# CongealSettings field -> its flag.
SETTING_FLAGS = {
    "preset": "--preset",
    "transform": "--transform",
    "fusion": "--fusion",
    "objective": "--objective",
    "reference": "--reference",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "lam": "--lambda",
    "gamma": "--gamma",
    "k": "--k",
    "code_size": "--code-size",
    "ink_weight": "--ink-weight",
    "distortion_blur": "--distortion-blur",
    "scale_weight": "--scale-weight",
    "distortion_features": "--distortion-features",
    "distortion_target": "--distortion-target",
    "distortion_window": "--distortion-window",
    "centring_weight": "--centring-weight",
    "min_steps": "--min-steps",
    "precision": "--precision",
    "seed": "--seed",
}


def _reference(value):
    """`--reference`: a strategy name, an image index, or a path to an image."""
    from keras_congeal.reference import STRATEGIES

    if value in STRATEGIES:
        return value
    try:
        return int(value)
    except ValueError:
        return os.path.abspath(value)


def _align_batch_size():
    from keras_congeal.constants import ALIGN_BATCH_SIZE

    return ALIGN_BATCH_SIZE


def _devices(value):
    """`--devices`: `all` or a positive integer."""
    if value == "all":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected 'all' or an integer >= 1, received "
                                         f"{value!r}")
    return count


def _add_settings(parser):
    """One flag per `CongealSettings` field; their defaults are the dataclass's."""
    from keras_congeal.constants import SETTING_CHOICES
    from keras_congeal.presets import PRESETS, preset_settings
    from keras_congeal.reference import STRATEGIES
    from keras_congeal.settings import CongealSettings

    defaults = CongealSettings()
    faces = preset_settings("lfw")
    group = parser.add_argument_group(
        "settings", "defaults are those of the preset (keras_congeal.settings.CongealSettings"
        ".for_preset): the digit defaults, and the face defaults for --preset lfw where "
        "shown; with --resume, those not given are the interrupted run's"
    )
    specs = {
        "preset": ({"choices": ["auto", *sorted(PRESETS)]},
                   "architecture of the paper's Table 1 and its training defaults",
                   "auto: mnist for greyscale images up to 64 pixels, lfw for colour or "
                   "larger images"),
        "transform": ({"choices": sorted(SETTING_CHOICES["transform"])}, "transform family", None),
        "fusion": ({"choices": list(SETTING_CHOICES["fusion"])},
                   "how DeSTNet stages combine (additive is the paper's)", None),
        "objective": ({"choices": list(SETTING_CHOICES["objective"])},
                      "loss: D+C the paper's; D distortion only; C complexity only", None),
        "reference": ({"type": _reference, "metavar": f"{'|'.join(STRATEGIES)}|INDEX|PATH"},
                      "the image the distortion term aligns to: a strategy, an image index, "
                      "or a PNG/JPEG file of the images' size", None),
        "epochs": ({"type": int, "metavar": "N"}, "training epochs", None),
        "batch_size": ({"type": int, "metavar": "N"}, "images per training step", None),
        "learning_rate": ({"type": float, "metavar": "LR"}, "Adam's learning rate", None),
        "lam": ({"type": float, "metavar": "LAMBDA", "dest": "lam"},
                "weight of the complexity term (lambda of Eq. 8)", None),
        "gamma": ({"type": float}, "strength of the positional penalty on the code", None),
        "k": ({"type": int}, "k of the positional penalty", None),
        "code_size": ({"type": int, "metavar": "N"}, "size of the auto-encoder's code |z|",
                      "the preset's"),
        "ink_weight": ({"type": float, "metavar": "W"},
                       "weight of the ink-preservation penalty (0: the paper's loss)", None),
        "distortion_blur": ({"type": float, "metavar": "SIGMA"},
                            "Gaussian blur (pixels) of both sides of the distortion (0: none)",
                            None),
        "scale_weight": ({"type": float, "metavar": "W"},
                         "weight of the scale anchor: keeps the set's mean scale (0: none)",
                         None),
        "distortion_features": ({"choices": list(SETTING_CHOICES["distortion_features"])},
                                "what the distortion compares: pixels (the paper's) or "
                                "local-contrast (illumination-invariant structure)", None),
        "distortion_target": ({"choices": list(SETTING_CHOICES["distortion_target"])},
                              "what the distortion compares with: the reference image, or "
                              "the aligned batch's mean", None),
        "distortion_window": ({"type": float, "metavar": "SIGMA"},
                              "centred Gaussian weight on the distortion, sigma as a "
                              "fraction of the image side (0: uniform)", None),
        "centring_weight": ({"type": float, "metavar": "W"},
                            "weight of the centring penalty: keeps the set's mean warp at "
                            "the identity (0: none)", None),
        "min_steps": ({"type": int, "metavar": "N"},
                      "train at least N steps (more epochs on small sets)", None),
        "precision": ({"choices": list(SETTING_CHOICES["precision"])},
                      "float32, or bfloat16 compute with float32 geometry and losses "
                      "(GPUs)", None),
        "seed": ({"type": int}, "seeds Keras, NumPy and the reference sample", None),
    }
    missing = set(SETTING_FLAGS) ^ {f.name for f in dataclasses.fields(CongealSettings)}
    if missing:  # a new setting needs its flag
        raise RuntimeError(f"CongealSettings fields without a flag (or stale flags): {missing}")
    for name, flag in SETTING_FLAGS.items():
        options, text, shown = specs[name]
        if shown is None:
            shown = getattr(defaults, name)
            if name in faces:
                shown = f"{shown}; lfw: {faces[name]}"
        group.add_argument(flag, default=None, help=f"{text} (default: {shown})",
                           **{"dest": name, **options})


def _add_output_arguments(parser):
    parser.add_argument("--output", "-o", required=True, metavar="DIR",
                        help="output directory; built in DIR.partial/, renamed to DIR when "
                        "complete")
    parser.add_argument("--key", help="the array of an .npz, or the dataset of an HDF5 "
                        "file (needed when it holds several)")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="use only the first N images (a quick try on a big set)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing DIR (removed only once the new result "
                        "is complete)")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars or notes; the summary is still printed")


def build_parser():
    """The argument parser (imports Keras: the defaults come from `CongealSettings`)."""
    from keras_congeal import __version__

    parser = OneLineParser(
        prog=PROG,
        description="Congeal (jointly align) an image set with deep penalised "
        "reconstruction congealing, or align new images with a trained model.",
        epilog=__doc__.split("Usage:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=functools.partial(OneLineParser,
                                                                    error_prog=PROG))
    align_default = _align_batch_size()

    congeal = commands.add_parser(
        "congeal", help="train on an image set and align it",
        description="Train a Congealer on INPUT (no labels) and write the aligned set, "
        "the transforms, the model, a report and figures into DIR.",
    )
    congeal.add_argument(
        "input", nargs="?", metavar="INPUT",
        help=".npy, .npz or HDF5 file, or a directory of PNG/JPEG files; none: the "
        "built-in demo set (1000 perturbed MNIST threes)",
    )
    _add_output_arguments(congeal)
    congeal.add_argument("--resume", action="store_true",
                         help="continue the unfinished run in DIR.partial/ from its last "
                         "finished epoch (same input and settings)")
    congeal.add_argument("--align-batch-size", type=int, default=align_default, metavar="N",
                         help=f"images per forward pass when aligning (default: "
                         f"{align_default})")
    congeal.add_argument("--devices", type=_devices, default=None, metavar="all|N",
                         help="train data parallel on all local GPUs or the first N "
                         "(--batch-size is the global batch, split across them; default: "
                         "one device)")
    multi = congeal.add_argument_group(
        "multi-host training (JAX backend; the same command on every host, all outputs "
        "written by process 0)")
    multi.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address of process 0, reachable from every process")
    multi.add_argument("--num-processes", type=int, metavar="N",
                       help="processes taking part (one per host)")
    multi.add_argument("--process-id", type=int, metavar="I",
                       help="this process's index, 0 to N-1 (0 writes the outputs)")
    _add_settings(congeal)

    align = commands.add_parser(
        "align", help="align images with a trained model (no training)",
        description="Align INPUT with the Congealer in MODEL and write the aligned set, the "
        "transforms, a report and figures into DIR.",
    )
    align.add_argument("model", metavar="MODEL", help="a model.keras written by congeal")
    align.add_argument("input", metavar="INPUT",
                       help=".npy, .npz or HDF5 file, or a directory of PNG/JPEG files")
    _add_output_arguments(align)
    align.add_argument("--batch-size", type=int, default=align_default, metavar="N",
                       help=f"images per forward pass (default: {align_default})")
    return parser


def _given_settings(parser, args):
    """The `CongealSettings` fields given on the command line, checked."""
    from keras_congeal.settings import CongealSettings

    given = {name: getattr(args, name) for name in SETTING_FLAGS
             if getattr(args, name) is not None}
    if given.get("preset") == "auto":
        given["preset"] = None
    try:
        CongealSettings(**given)
    except ValueError as error:
        message = str(error)
        for name, flag in SETTING_FLAGS.items():
            message = message.replace(f"Invalid {name}=", f"invalid {flag} ")
        parser.error(message.rstrip("."))
    return given


# Lines the frameworks print on file descriptor 2 while they load, that are
# not errors: absl's preamble, info and warning lines (absl's "I0000 ..." and
# TensorFlow's older "2026-01-01 12:00:00.0: I ..." formats), and error-level
# lines that are start-up notices (oneDNN's, CUDA plug-ins registered twice).
# TF_CPP_MIN_LOG_LEVEL does not stop them: they come before absl is set up.
_START_UP_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IW]\d{4} \d\d:\d\d:\d\d"
    r"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "
    r"|E\d{4} .*(oneDNN custom operations|Unable to register cu\w+ factory"
    r"|already been registered)"
)


def start_up_noise(line):
    """Whether `line` (printed while a framework loads) is start-up noise."""
    return _START_UP_NOISE.match(line) is not None


@contextlib.contextmanager
def _framework_logs_filtered():
    """Holds back what is written to file descriptor 2 in the block, then
    writes it back without the frameworks' start-up noise (`start_up_noise`);
    everything is written back if the block fails.

    TensorFlow prints start-up lines straight to the descriptor when it loads;
    an error message must stay one line, and a normal run should not open
    with a line that looks like a failure.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (e.g. a closed stderr): nothing to hold
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(keepends=True)
            kept = lines if failed else [line for line in lines if not start_up_noise(line)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def _load_frameworks():
    """Imports Keras (its backend, from KERAS_BACKEND) and TensorFlow when it is
    installed (Keras's file and seeding utilities import it on every backend),
    with their start-up noise filtered out."""
    with _framework_logs_filtered():
        import keras  # noqa: F401

        if importlib.util.find_spec("tensorflow") is not None:
            import tensorflow  # noqa: F401


def _output_dir(args):
    """The checked `AtomicOutputDir` of the command (nothing written)."""
    from keras_congeal.io import AtomicOutputDir

    if args.command == "congeal":
        return AtomicOutputDir(args.output, overwrite=args.overwrite, resume=args.resume,
                               protect=[args.input] if args.input else []).check()
    return AtomicOutputDir(args.output, overwrite=args.overwrite, resume=False,
                           protect=[args.input, args.model], resumable=False).check()


def _run(args, given):
    """The command, its inputs checked before any framework loads (seconds)."""
    from keras_congeal.cli._inputs import open_input
    from keras_congeal.io import InputError, check_model_file

    out = _output_dir(args)
    if args.command == "align":
        check_model_file(args.model)
    # The demo set is generated with Keras: opened once it has loaded.
    inputs = open_input(args.input, args.key, args.limit) if args.input else None
    try:
        _load_frameworks()
        if getattr(args, "coordinator", None) is not None:
            from keras_congeal.training import initialize_multi_host

            try:  # before the demo set or anything else runs on JAX
                initialize_multi_host(args.coordinator, args.num_processes, args.process_id)
            except ValueError as error:
                raise InputError(f"--coordinator: {error}") from None
        if inputs is None:
            inputs = open_input(None, limit=args.limit)
        if args.command == "congeal":
            from keras_congeal.cli.congeal import run_congeal

            return run_congeal(args, given, SETTING_FLAGS, out, inputs)
        from keras_congeal.cli.align import run_align

        return run_align(args, out, inputs)
    finally:
        if inputs is not None:
            inputs.close()


def main(argv=None) -> int:
    # Before Keras imports TensorFlow: no C++ log lines while training. Level 3 keeps
    # FATAL only: at 2, every TensorFlow run printed "E0000 ... oneDNN supports
    # DT_INT32 only on platforms with AVX-512" at its first step, an error-looking
    # line in a normal run; TensorFlow's real errors reach Python as exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)  # before Keras loads: --help and usage errors are instant
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, received {args.limit}")
    if args.command == "congeal" and args.align_batch_size < 1:
        parser.error(f"--align-batch-size must be >= 1, received {args.align_batch_size}")
    if args.command == "align" and args.batch_size < 1:
        parser.error(f"--batch-size must be >= 1, received {args.batch_size}")
    given = None
    if args.command == "congeal":
        if args.key is not None and args.input is None:
            parser.error("--key needs an INPUT file")
        given = _given_settings(parser, args)
        _check_multi_host(parser, args)
    try:
        status = _run(args, given)
        if status == 130:
            _quiet_after_interrupt()
        return status
    except KeyboardInterrupt:
        _quiet_after_interrupt()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        from keras_congeal.io import InputError

        if not isinstance(error, (InputError, OSError)):
            raise
        message = str(error) if isinstance(error, InputError) else _os_message(error)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


def _check_multi_host(parser, args):
    """`--coordinator`, `--num-processes` and `--process-id`: all or none."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(flag is None for flag in flags):
        return
    if any(flag is None for flag in flags):
        parser.error("--coordinator, --num-processes and --process-id go together")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        parser.error(f"--process-id {args.process_id}: expected 0 to N-1 with "
                     f"--num-processes N >= 1 (N = {args.num_processes})")
    if args.resume and args.num_processes > 1:
        parser.error("--resume is for one host: a multi-host run starts afresh")


def _quiet_after_interrupt():
    """After Ctrl-C the message is the one line printed; what the interrupted
    framework's half-exited contexts report when they are finalised at exit
    ("Exception ignored in: <generator ... _variable_creator_scope>") is not.
    What the interrupted run left (a training input iterator) is finalised
    now, while the interpreter is whole, not during its shutdown."""
    import gc

    sys.unraisablehook = lambda unraisable: None
    gc.collect()


def _os_message(error):
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
