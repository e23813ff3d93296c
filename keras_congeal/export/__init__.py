"""Export a trained `Congealer`'s aligner to ONNX (format of docs/onnx_contract.md).

Modules:

* `contract`: the graph's names, the format version and the metadata keys, the
  one definition that `keras_congeal_serving` reads;
* `onnx`: the conversion (`to_onnx`) and the file (`export_onnx`);
* `verify`: onnxruntime against Keras (`verify_onnx`);
* `triton`: a Triton model repository entry;
* `main`: the command line, `keras-congeal export`, also `python -m
  keras_congeal.export` or `keras-congeal-export` (`keras_congeal.cli.export`);
* `_tf_ops`: the TensorFlow warp that becomes one ONNX `GridSample`, and its
  tf2onnx handler (imported only while exporting: it needs TensorFlow).

Nothing here imports TensorFlow, Keras or tf2onnx until an export runs.

Example:

>>> from keras_congeal.export import export_onnx
>>> result = export_onnx("runs/digits/model.keras", "aligner.onnx", any_size=True)
"""

from keras_congeal.export.contract import FORMAT_VERSION, ExportError
from keras_congeal.export.onnx import (
    SAMPLERS,
    ExportResult,
    export_onnx,
    load_congealer,
    to_onnx,
)
from keras_congeal.export.triton import triton_config, write_triton_repo
from keras_congeal.export.verify import verify_onnx

__all__ = [
    "ExportError",
    "ExportResult",
    "FORMAT_VERSION",
    "SAMPLERS",
    "export_onnx",
    "load_congealer",
    "main",
    "to_onnx",
    "triton_config",
    "verify_onnx",
    "write_triton_repo",
]


def main(argv=None) -> int:
    """`keras-congeal-export ARGS` (`keras-congeal export ARGS` under its own
    program name): see `keras_congeal.cli.export`."""
    # Imported here: the command line imports this package.
    from keras_congeal.cli.export import COMMAND

    return COMMAND.main(argv)
