"""The ONNX contract between the exporter and `keras_congeal_serving`.

The one definition of the graph's names, the format version and the
metadata keys (docs/onnx_contract.md). The serving package (which does not
import keras_congeal) reads the same keys; `tests/test_end_to_end.py`
exports a trained model and checks that both packages agree on them.
"""

__all__ = [
    "ExportError",
    "FORMAT_VERSION",
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "METADATA_PREFIX",
    "METADATA_KEYS",
    "VALUE_RANGE",
    "metadata",
]

# Raised when the graph or its metadata changes incompatibly; serving refuses
# versions it does not know.
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAMES = ("aligned", "transforms")
METADATA_PREFIX = "keras_congeal."
# Every key written into `metadata_props`, without the prefix.
METADATA_KEYS = (
    "format_version",
    "version",
    "image_height",
    "image_width",
    "channels",
    "transform",
    "value_range",
    "any_size",
    "input_name",
)
# The images' scale: float32 in [0, 1].
VALUE_RANGE = "0,1"


class ExportError(Exception):
    """An export that cannot proceed, with a one-line reason for the user."""


def metadata(image_shape, transform, any_size):
    """The `metadata_props` of an export, `{"keras_congeal.<key>": str}`.

    Args:
        image_shape: tuple. The training size `(height, width, channels)`.
        transform: str. The transformation family.
        any_size: bool. Whether the graph accepts any height and width.
    """
    from keras_congeal import __version__

    height, width, channels = image_shape
    values = {
        "format_version": str(FORMAT_VERSION),
        "version": __version__,
        "image_height": str(height),
        "image_width": str(width),
        "channels": str(channels),
        "transform": transform,
        "value_range": VALUE_RANGE,
        "any_size": "true" if any_size else "false",
        "input_name": INPUT_NAME,
    }
    return {METADATA_PREFIX + key: value for key, value in values.items()}
