"""Loading the frameworks quietly: Keras (and TensorFlow when installed) with
their start-up noise held back from stderr, and silence after a Ctrl-C."""

import contextlib
import importlib.util
import os
import re
import sys
import tempfile

__all__ = ["framework_logs_filtered", "load_frameworks", "quiet_after_interrupt",
           "start_up_noise"]


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
def framework_logs_filtered():
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


def load_frameworks():
    """Imports Keras (its backend, from KERAS_BACKEND) and TensorFlow when it is
    installed (Keras's file and seeding utilities import it on every backend),
    with their start-up noise filtered out."""
    with framework_logs_filtered():
        import keras  # noqa: F401

        if importlib.util.find_spec("tensorflow") is not None:
            import tensorflow  # noqa: F401


def quiet_after_interrupt():
    """After Ctrl-C the message is the one line printed; what the interrupted
    framework's half-exited contexts report when they are finalised at exit
    ("Exception ignored in: <generator ... _variable_creator_scope>") is not.
    What the interrupted run left (a training input iterator) is finalised
    now, while the interpreter is whole, not during its shutdown."""
    import gc

    sys.unraisablehook = lambda unraisable: None
    gc.collect()
