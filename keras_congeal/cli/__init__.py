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

    # Export the trained model to ONNX (keras-congeal export --help), the
    # same as `python -m keras_congeal.export` and `keras-congeal-export`:
    keras-congeal export runs/digits/model.keras aligner.onnx --any-size

    # Generate the paper's digit sets from a local MNIST (keras-congeal data
    # --help), the same as `python -m keras_congeal.data`:
    keras-congeal data mnist --digit 3 --n 6000 --sigma 0.2 --output threes.npy

The Keras backend is Keras's: set KERAS_BACKEND (tensorflow, jax, torch).

Outputs of congeal and align (in --output DIR, which appears only once complete):

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
The commands' own --help pages say the rest (export and data: their statuses).

Modules: one per command (`congeal`, `align`, `export`, `data`: each defines
its `Command`: arguments, checks, run), `_parser` (`Command` and the parser
class of every command line),
`_image_command` (what congeal and align share: input checks before the
frameworks load, errors as exit statuses), `_settings_flags`, `_frameworks`,
`_inputs`, `_aligning`, `_report`, `_train_and_align`.
"""

import argparse
import functools
import os

from keras_congeal.cli import align, congeal, data, export
from keras_congeal.cli._frameworks import start_up_noise
from keras_congeal.cli._image_command import PROG
from keras_congeal.cli._parser import OneLineParser
from keras_congeal.cli._settings_flags import SETTING_FLAGS

__all__ = ["PROG", "SETTING_FLAGS", "build_parser", "main", "start_up_noise"]

# The commands, in the order `--help` lists them.
COMMANDS = (congeal.COMMAND, align.COMMAND, export.COMMAND, data.COMMAND)


def build_parser():
    """The argument parser (imports no framework: `--help` and usage errors are instant)."""
    from keras_congeal import __version__

    parser = OneLineParser(
        prog=PROG,
        description="Congeal (jointly align) an image set with deep penalised "
        "reconstruction congealing, align new images with a trained model, export it "
        "to ONNX, or generate the paper's digit data sets.",
        epilog=__doc__.split("Usage:", 1)[1].split("Modules:", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=functools.partial(OneLineParser,
                                                                    error_prog=PROG))
    for command in COMMANDS:
        command.add_to(commands)  # its errors name the program `keras-congeal`
    return parser


def main(argv=None) -> int:
    # Before Keras imports TensorFlow: no C++ log lines while training. Level 3 keeps
    # FATAL only: at 2, every TensorFlow run printed "E0000 ... oneDNN supports
    # DT_INT32 only on platforms with AVX-512" at its first step, an error-looking
    # line in a normal run; TensorFlow's real errors reach Python as exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = build_parser()
    args = parser.parse_args(argv)  # before Keras loads: --help and usage errors are instant
    return args.run(args)
