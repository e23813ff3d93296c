"""Exceptions raised by keras_congeal_serving.

All messages are one line, meant to be shown to a user as they are (the batch
command prints them on stderr, the HTTP service returns them as `detail`).
"""

__all__ = [
    "InputError",
    "UnreadableInputError",
    "TooLargeError",
    "ModelError",
    "ProviderError",
    "WorkerError",
]


class InputError(ValueError):
    """The input does not fit the model: shape, channels, size, values, empty.

    The HTTP service answers it with 422.
    """


class UnreadableInputError(InputError):
    """The input cannot be read at all: missing file, not an image, not a .npy,
    unknown key. The HTTP service answers it with 400."""


class TooLargeError(InputError):
    """The input would decode to more pixels than allowed (per image, per request
    or per set), told from image headers before anything is decoded. The HTTP
    service answers it with 413."""


class ModelError(RuntimeError):
    """The ONNX file cannot be loaded or does not follow the keras_congeal contract."""


class ProviderError(RuntimeError):
    """Strict mode: the requested execution provider is not the one in use."""


class WorkerError(RuntimeError):
    """`ray-align`: the Ray workers cannot start (the cluster lacks the resources
    they ask for, or their `Aligner` fails there, e.g. no CUDA on the node)."""
