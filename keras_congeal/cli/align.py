"""The `align` command: align images with a trained `Congealer` (no training).

Writes the outputs of `congeal` except `model.keras` and `settings.json`,
atomically: into `DIR.partial/`, renamed to `DIR` once complete, deleted
on any failure (there is nothing to resume).
"""

import os
import time

from keras_congeal.cli._image_command import (
    add_input_output_arguments,
    check_limit,
    run_on_images,
)
from keras_congeal.cli._parser import Command

__all__ = ["COMMAND", "run", "run_align"]


def _add_arguments(parser):
    from keras_congeal.constants import ALIGN_BATCH_SIZE

    parser.add_argument("model", metavar="MODEL", help="a model.keras written by congeal")
    parser.add_argument(
        "input", metavar="INPUT", help=".npy, .npz or HDF5 file, or a directory of PNG/JPEG files"
    )
    add_input_output_arguments(parser)
    # `congeal --batch-size` is the training batch; here the forward pass has the
    # name it has in `congeal` (--batch-size, its first name, still works).
    parser.add_argument(
        "--align-batch-size",
        "--batch-size",
        dest="align_batch_size",
        type=int,
        default=ALIGN_BATCH_SIZE,
        metavar="N",
        help=f"images per forward pass (default: {ALIGN_BATCH_SIZE}; also --batch-size)",
    )


def run(parser, args) -> int:
    """Runs the `align` command; returns the exit status."""
    from keras_congeal.io import AtomicOutputDir

    check_limit(parser, args)
    if args.align_batch_size < 1:
        parser.error(f"--align-batch-size must be >= 1, received {args.align_batch_size}")
    out = AtomicOutputDir(
        args.output,
        overwrite=args.overwrite,
        resume=False,
        protect=[args.input, args.model],
        resumable=False,
    )
    return run_on_images(
        args, out, lambda out, inputs: run_align(args, out, inputs), model=args.model
    )


def _check_image_shape(model, inputs, model_name):
    """Raises `InputError` unless the images have the model's shape."""
    from keras_congeal.io import InputError

    expected = tuple(model.image_shape)
    if tuple(inputs.image_shape) != expected:
        got = "x".join(map(str, inputs.image_shape))
        raise InputError(
            f"{inputs.source.name}: images are {got} (height x width x channels), but "
            f"{model_name} was trained on {'x'.join(map(str, expected))}"
        )


def run_align(args, out, inputs):
    """Aligns the input into the output directory; returns the exit status.

    Args:
        args: the parsed `argparse.Namespace`.
        out: the checked `AtomicOutputDir`.
        inputs: the opened `InputSet` (closed by the caller).

    Raises:
        InputError: a bad model, input or output; nothing was written.
    """
    # Imported here: the parser is built before Keras loads.
    from keras import ops

    from keras_congeal.cli._aligning import align_into
    from keras_congeal.cli._report import (
        report_header,
        summary_lines,
        write_figures,
        write_json,
        write_report,
    )
    from keras_congeal.models.saving import load_congealer

    start_time = time.perf_counter()
    say = (lambda *a: None) if args.quiet else print
    model = load_congealer(args.model)
    _check_image_shape(model, inputs, args.model)
    partial = out.begin()
    try:
        say(f"aligning {inputs.describe()} with {args.model}")
        meter, align_seconds = align_into(
            model, inputs, partial, args.align_batch_size, verbose=not args.quiet
        )
        reference = ops.convert_to_numpy(model.reference)
        write_figures(partial, inputs, meter, reference, "reference (of the model)")
        if inputs.filenames is not None:
            write_json(out.file("filenames.json"), inputs.filenames)
        summary = meter.summary()
        summary.pop("images")
        report = {
            **report_header("align"),
            "model": os.path.abspath(args.model),
            "transform": model.transform,
            "input": inputs.info(args.limit),
            "images": inputs.count,
            "image_shape": list(inputs.image_shape),
            "dtype": inputs.dtype.name,
            **summary,
            "seconds": {"aligning": align_seconds, "total": time.perf_counter() - start_time},
            "batch_size": args.align_batch_size,
        }
        write_report(out, report)
        out.commit()
    except BaseException:
        out.discard()
        raise
    for line in summary_lines(report, out.path):
        print(line)
    return 0


COMMAND = Command(
    name="align",
    summary="align images with a trained model (no training)",
    description="Align INPUT with the Congealer in MODEL and write the aligned set, the "
    "transforms, a report and figures into DIR.",
    add_arguments=_add_arguments,
    run=run,
)
