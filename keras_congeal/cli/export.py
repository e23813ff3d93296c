"""The `export` command: a trained Congealer (.keras) to ONNX
(docs/onnx_contract.md), optionally with a Triton model repository entry.

Usage:

    # Dynamic batch, training size, opset 17, verified against Keras:
    keras-congeal export congealer.keras aligner.onnx

    # Any input size (the graph resizes a copy to predict the transform and
    # warps the full-resolution input), plus a Triton model repository:
    keras-congeal export congealer.keras aligner.onnx --any-size \\
        --triton-repo model_repository --triton-name faces

    # A fixed batch of 64, gather-based sampler (runtimes without GridSample):
    keras-congeal export congealer.keras aligner.onnx --batch 64 \\
        --sampler gather --opset 13 --overwrite

The same command, under its own program name: `python -m keras_congeal.export`
and `keras-congeal-export` (same arguments).

Exit status: 0 written; 1 bad model or output, or a failed export (one line on
stderr, nothing written); 2 bad arguments.
"""

import os
import sys

from keras_congeal.cli._frameworks import load_frameworks
from keras_congeal.cli._parser import Command, count_or
from keras_congeal.export.contract import ExportError
from keras_congeal.export.onnx import (
    DEFAULT_OPSET,
    MAX_OPSET,
    SAMPLERS,
    check_options,
    check_writable,
    export_onnx,
    load_congealer,
    require_tensorflow,
)
from keras_congeal.export.triton import DEFAULT_MAX_BATCH_SIZE
from keras_congeal.io.images import InputError, check_model_file

__all__ = ["COMMAND", "PROG", "run"]

# The stand-alone program (`python -m keras_congeal.export`).
PROG = "keras-congeal-export"

DESCRIPTION = "Export a trained Congealer (.keras) to ONNX (docs/onnx_contract.md)."

_batch = count_or("dynamic", None, "expected 'dynamic' or a positive integer, got {value!r}")


def _add_arguments(parser):
    parser.add_argument("model", help="the trained Congealer, a .keras file")
    parser.add_argument("output", help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; GridSample needs >= 16, "
                             f"tf2onnx supports <= {MAX_OPSET})")
    parser.add_argument("--batch", type=_batch, default=None, metavar="dynamic|N",
                        help="batch dimension: 'dynamic' (default) or a fixed size")
    parser.add_argument("--any-size", action="store_true",
                        help="accept any image height and width (the transform is predicted "
                             "on a copy resized to the training size)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="gridsample",
                        help="'gridsample' (one GridSample per warp, default) or 'gather' "
                             "(for runtimes without GridSample)")
    parser.add_argument("--triton-repo", metavar="DIR",
                        help="also write DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx")
    parser.add_argument("--triton-name", metavar="NAME",
                        help="Triton model name (default: the output file's stem)")
    parser.add_argument("--triton-max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE,
                        metavar="N", help="max_batch_size of the Triton config (default "
                                          f"{DEFAULT_MAX_BATCH_SIZE})")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the onnxruntime-vs-Keras parity check")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")


def run(parser, args) -> int:
    """Runs the export; returns the exit status.

    Args:
        parser: the `OneLineParser` that parsed `args` (for its errors and
            the program named in messages).
        args: the parsed `argparse.Namespace`.
    """
    prog = parser.program
    if args.triton_name is not None and args.triton_repo is None:
        parser.error("--triton-name needs --triton-repo")
    if args.triton_max_batch_size < 1:
        parser.error("--triton-max-batch-size must be a positive integer")
    try:
        check_options(args.opset, args.batch, args.sampler)
    except ValueError as error:
        parser.error(str(error))
    # Cheap checks first: importing TensorFlow takes seconds.
    try:
        check_model_file(args.model)
        check_writable(args.output, args.overwrite)
    except (InputError, ExportError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    if "keras" not in sys.modules:
        # tf2onnx converts TensorFlow graphs: select the backend before Keras
        # is imported (a model trained on JAX or PyTorch loads on TensorFlow).
        if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
            print(f"{prog}: using the TensorFlow backend for the export "
                  f"(KERAS_BACKEND was {os.environ['KERAS_BACKEND']!r})", file=sys.stderr)
        os.environ["KERAS_BACKEND"] = "tensorflow"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as keras_congeal.cli.main
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    try:
        load_frameworks()  # TensorFlow's start-up lines held back from stderr
        require_tensorflow()
        congealer = load_congealer(args.model)
        result = export_onnx(
            congealer,
            args.output,
            opset=args.opset,
            any_size=args.any_size,
            batch=args.batch,
            sampler=args.sampler,
            verify=not args.no_verify,
            overwrite=args.overwrite,
            triton_repo=args.triton_repo,
            triton_name=args.triton_name,
            triton_max_batch_size=args.triton_max_batch_size,
        )
    except ExportError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    ops = ", ".join(
        f"{k} {v}" for k, v in result.op_counts.items() if k.startswith(("Grid", "Gather"))
    )
    print(f"wrote {result.path}: opset {result.opset}, {result.num_nodes} nodes ({ops}), "
          f"batch {result.batch or 'dynamic'}, any size: {result.any_size}")
    if result.parity is None:
        print("not verified (--no-verify)")
    for key, diffs in (result.parity or {}).items():
        print(f"verified {key}: aligned max abs diff {diffs['aligned_max_abs_diff']:.2e}, "
              f"transforms max rel diff {diffs['transforms_max_rel_diff']:.2e}")
    if result.triton_model_dir:
        print(f"wrote Triton model {result.triton_model_dir}")
    return 0


COMMAND = Command(
    name="export", summary="export a trained model to ONNX (and a Triton repository)",
    description=DESCRIPTION, add_arguments=_add_arguments, run=run, doc=__doc__,
    program=PROG,
)
