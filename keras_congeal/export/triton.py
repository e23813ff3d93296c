"""A Triton Inference Server model repository entry for an exported graph."""

import re
import shutil
from pathlib import Path

from keras_congeal.export.contract import INPUT_NAME, OUTPUT_NAMES, ExportError
from keras_congeal.io import atomic_file

__all__ = ["triton_config", "triton_name", "write_triton_repo", "DEFAULT_MAX_BATCH_SIZE"]

DEFAULT_MAX_BATCH_SIZE = 256

_TRITON_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def triton_name(name):
    """`name` if it is a valid Triton model name; raises `ExportError` otherwise."""
    if not _TRITON_NAME.match(name or ""):
        raise ExportError(
            f"invalid Triton model name {name!r}: use letters, digits, '_', '.', '-'"
        )
    return name


def triton_config(name, image_shape, any_size, batch=None, max_batch_size=DEFAULT_MAX_BATCH_SIZE):
    """The `config.pbtxt` text of the Triton onnxruntime backend for an export."""
    height, width, channels = image_shape
    hw = [-1, -1] if any_size else [height, width]
    image_dims = hw + [channels]
    if batch is None:
        lines = [f"max_batch_size: {max_batch_size}"]
        prefix = []
    else:  # A fixed batch is part of the dims; Triton then cannot batch.
        lines = ["max_batch_size: 0"]
        prefix = [batch]

    def dims(values):
        return ", ".join(str(v) for v in prefix + list(values))

    text = [
        f'name: "{name}"',
        'platform: "onnxruntime_onnx"',
        *lines,
        "input [",
        "  {",
        f'    name: "{INPUT_NAME}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {dims(image_dims)} ]",
        "  }",
        "]",
        "output [",
        "  {",
        f'    name: "{OUTPUT_NAMES[0]}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {dims(image_dims)} ]",
        "  },",
        "  {",
        f'    name: "{OUTPUT_NAMES[1]}"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {dims([3, 3])} ]",
        "  }",
        "]",
    ]
    if batch is None:
        text += ["dynamic_batching {", "}"]
    return "\n".join(text) + "\n"


def write_triton_repo(onnx_path, repo, name, image_shape, any_size, batch=None,
                      max_batch_size=DEFAULT_MAX_BATCH_SIZE, overwrite=False):
    """Writes `repo/<name>/config.pbtxt` and `repo/<name>/1/model.onnx`.

    Returns:
        The model directory `repo/<name>` (a `Path`).
    """
    model_dir = Path(repo) / triton_name(name)
    targets = [model_dir / "config.pbtxt", model_dir / "1" / "model.onnx"]
    for target in targets:
        if target.exists() and not overwrite:
            raise ExportError(f"{target} already exists; pass --overwrite to replace it")
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    config = triton_config(name, image_shape, any_size, batch, max_batch_size)
    with atomic_file(targets[0]) as tmp:
        Path(tmp).write_text(config)
    with atomic_file(targets[1]) as tmp:
        shutil.copyfile(onnx_path, tmp)
    return model_dir
