"""The `congeal` command: its arguments, their checks, and the run (the work
itself is `keras_congeal.cli._train_and_align`, imported once the arguments
and the input are checked)."""

from keras_congeal.cli._image_command import (
    add_input_output_arguments,
    check_limit,
    run_on_images,
)
from keras_congeal.cli._parser import Command, count_or
from keras_congeal.cli._settings_flags import (
    SETTING_FLAGS,
    add_setting_arguments,
    given_settings,
)

__all__ = ["COMMAND", "run"]

_devices = count_or("all", "all", "expected 'all' or an integer >= 1, received {value!r}")


def _add_arguments(parser):
    from keras_congeal.constants import ALIGN_BATCH_SIZE

    parser.add_argument(
        "input",
        nargs="?",
        metavar="INPUT",
        help=".npy, .npz or HDF5 file, or a directory of PNG/JPEG files; none: the "
        "built-in demo set (1000 perturbed MNIST threes)",
    )
    add_input_output_arguments(parser)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the unfinished run in DIR.partial/ from its last "
        "finished epoch (same input and settings)",
    )
    parser.add_argument(
        "--align-batch-size",
        type=int,
        default=ALIGN_BATCH_SIZE,
        metavar="N",
        help=f"images per forward pass when aligning (default: {ALIGN_BATCH_SIZE})",
    )
    parser.add_argument(
        "--devices",
        type=_devices,
        default=None,
        metavar="all|N",
        help="train data parallel on all local GPUs or the first N "
        "(--batch-size is the global batch, split across them; default: "
        "one device)",
    )
    multi = parser.add_argument_group(
        "multi-host training (JAX backend; the same command on every host, all outputs "
        "written by process 0)"
    )
    multi.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="address of process 0, reachable from every process",
    )
    multi.add_argument(
        "--num-processes", type=int, metavar="N", help="processes taking part (one per host)"
    )
    multi.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="this process's index, 0 to N-1 (0 writes the outputs)",
    )
    add_setting_arguments(parser)


def _check_multi_host(parser, args):
    """`--coordinator`, `--num-processes` and `--process-id`: all or none."""
    flags = (args.coordinator, args.num_processes, args.process_id)
    if all(flag is None for flag in flags):
        return
    if any(flag is None for flag in flags):
        parser.error("--coordinator, --num-processes and --process-id go together")
    if args.num_processes < 1 or not 0 <= args.process_id < args.num_processes:
        parser.error(
            f"--process-id {args.process_id}: expected 0 to N-1 with "
            f"--num-processes N >= 1 (N = {args.num_processes})"
        )
    if args.resume and args.num_processes > 1:
        parser.error("--resume is for one host: a multi-host run starts afresh")


def _initialize_multi_host(args):
    """Joins the multi-host run (before the demo set or anything else runs on JAX)."""
    from keras_congeal.io import InputError
    from keras_congeal.training import initialize_multi_host

    try:
        initialize_multi_host(args.coordinator, args.num_processes, args.process_id)
    except ValueError as error:
        raise InputError(f"--coordinator: {error}") from None


def run(parser, args) -> int:
    """Runs the `congeal` command; returns the exit status."""
    from keras_congeal.io import AtomicOutputDir

    check_limit(parser, args)
    if args.align_batch_size < 1:
        parser.error(f"--align-batch-size must be >= 1, received {args.align_batch_size}")
    if args.key is not None and args.input is None:
        parser.error("--key needs an INPUT file")
    given = given_settings(parser, args)
    _check_multi_host(parser, args)
    out = AtomicOutputDir(
        args.output,
        overwrite=args.overwrite,
        resume=args.resume,
        protect=[args.input] if args.input else [],
    )

    def work(out, inputs):
        from keras_congeal.cli._train_and_align import train_and_align

        return train_and_align(args, given, SETTING_FLAGS, out, inputs)

    multi_host = args.coordinator is not None
    return run_on_images(
        args,
        out,
        work,
        after_frameworks_load=(lambda: _initialize_multi_host(args)) if multi_host else None,
    )


COMMAND = Command(
    name="congeal",
    summary="train on an image set and align it",
    description="Train a Congealer on INPUT (no labels) and write the aligned set, the "
    "transforms, the model, a report and figures into DIR.",
    add_arguments=_add_arguments,
    run=run,
)
