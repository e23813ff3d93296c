"""What `congeal` and `align` share as commands: the input and output
arguments, the output directory and the input checked before any framework
loads (seconds, not the framework's start-up), and failures turned into one
line on stderr and an exit status."""

import sys

from keras_congeal.cli._frameworks import load_frameworks, quiet_after_interrupt

__all__ = ["PROG", "add_input_output_arguments", "check_limit", "run_on_images"]

PROG = "keras-congeal"


def add_input_output_arguments(parser):
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="DIR",
        help="output directory; built in DIR.partial/, renamed to DIR when complete",
    )
    parser.add_argument(
        "--key",
        help="the array of an .npz, or the dataset of an HDF5 file (needed when it holds several)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        metavar="N",
        help="use only the first N images (a quick try on a big set)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing DIR (removed only once the new result is complete)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or notes; the summary is still printed",
    )


def check_limit(parser, args):
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be >= 1, received {args.limit}")


def run_on_images(args, out, work, model=None, after_frameworks_load=None):
    """Opens the input, loads the frameworks and runs `work`; returns the exit
    status, failures reported in one line on stderr.

    Checked before the frameworks load: `out`, `model` (a model file, if
    any) and INPUT; the built-in demo set (no INPUT) is generated with Keras,
    so it is opened after.

    Args:
        args: the parsed `argparse.Namespace` (`input`, `key`, `limit`).
        out: the command's `AtomicOutputDir`, not yet checked.
        work: `work(out, inputs)` -> exit status, with the checked
            `AtomicOutputDir` and the opened `InputSet`.
        model: str or None. A model file to check first.
        after_frameworks_load: callable or None. Runs once the frameworks
            have loaded, before the demo set is generated.

    Returns:
        `work`'s status; 1 for a bad input or output (`InputError`,
        `OSError`); 130 when interrupted.
    """
    from keras_congeal.cli._inputs import open_input
    from keras_congeal.io import InputError, check_model_file

    try:
        out.check()
        if model is not None:
            check_model_file(model)
        inputs = open_input(args.input, args.key, args.limit) if args.input else None
        try:
            load_frameworks()
            if after_frameworks_load is not None:
                after_frameworks_load()
            if inputs is None:
                inputs = open_input(None, limit=args.limit)
            status = work(out, inputs)
        finally:
            if inputs is not None:
                inputs.close()
        if status == 130:
            quiet_after_interrupt()
        return status
    except KeyboardInterrupt:
        quiet_after_interrupt()
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (InputError, OSError) as error:
        message = str(error) if isinstance(error, InputError) else _os_message(error)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1


def _os_message(error):
    if error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error).splitlines()[0] if str(error) else type(error).__name__
