"""The `align` command: align images with a trained `Congealer` (no training).

Writes the outputs of `congeal` except `model.keras` and `settings.json`,
atomically: into `DIR.partial/`, renamed to `DIR` once complete, deleted
on any failure (there is nothing to resume).
"""

import os
import time

from keras import ops

from keras_congeal.cli._outputs import (
    align_into,
    check_model_input,
    report_header,
    summary_lines,
    write_figures,
    write_json,
)
from keras_congeal.models.saving import load_congealer

__all__ = ["run_align"]


def run_align(args, out, inputs):
    """Runs the `align` command; returns the exit status.

    Args:
        args: the parsed `argparse.Namespace`.
        out: the checked `AtomicOutputDir` (`output_dir`).
        inputs: the opened `InputSet` (closed by the caller).

    Raises:
        InputError: a bad model, input or output; nothing was written.
    """
    start_time = time.perf_counter()
    say = (lambda *a: None) if args.quiet else print
    model = load_congealer(args.model)
    check_model_input(model, inputs, args.model)
    partial = out.begin()
    try:
        say(f"aligning {inputs.describe()} with {args.model}")
        meter, align_seconds = align_into(model, inputs, partial, args.batch_size,
                                          verbose=not args.quiet)
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
            "seconds": {"aligning": align_seconds,
                        "total": time.perf_counter() - start_time},
            "batch_size": args.batch_size,
        }
        report["files"] = sorted(set(os.listdir(partial)) | {"report.json"})
        write_json(out.file("report.json"), report)
        out.commit()
    except BaseException:
        out.discard()
        raise
    for line in summary_lines(report, out.path):
        print(line)
    return 0
