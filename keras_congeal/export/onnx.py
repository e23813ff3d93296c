"""Export a trained `Congealer`'s aligner to ONNX (format of docs/onnx_contract.md).

The exported graph maps `images` (batch, H, W, C), float32 in [0, 1], to
`aligned` (same shape) and `transforms` (batch, 3, 3), the pixel `src_from_dst`
matrices in the input's own pixel frame. Every warp (the final one and those
inside the DeSTNet aligner) is a single ONNX `GridSample` (bilinear, zeros
padding, `align_corners=1`), not a cascade of gathers. The exported model is
checked with `onnx.checker` and, by default, run with onnxruntime and compared
with the Keras model before it is written (atomically).

The exported graph needs the TensorFlow backend (tf2onnx converts TensorFlow
graphs); the model may have been trained on any backend. From Python, set
`KERAS_BACKEND=tensorflow` before importing Keras; the command line
(`keras_congeal.cli.export`) selects TensorFlow itself.
"""

import contextlib
import dataclasses
import os
from pathlib import Path

from keras_congeal.export import triton
from keras_congeal.export.contract import (
    INPUT_NAME,
    OUTPUT_NAMES,
    ExportError,
    metadata,
)
from keras_congeal.export.triton import DEFAULT_MAX_BATCH_SIZE
from keras_congeal.export.verify import verify_onnx
from keras_congeal.io import InputError, atomic_file

__all__ = [
    "DEFAULT_OPSET",
    "MAX_OPSET",
    "MIN_OPSET",
    "SAMPLERS",
    "ExportResult",
    "check_options",
    "check_writable",
    "export_onnx",
    "load_congealer",
    "require_tensorflow",
    "to_onnx",
]

SAMPLERS = ("gridsample", "gather")
DEFAULT_OPSET = 17
# tf2onnx 1.17 converts up to opset 18; the gather graph needs 11 (GatherND),
# GridSample joined ONNX in opset 16 (the version of the tf2onnx handler in
# `_tf_ops`).
MAX_OPSET = 18
MIN_OPSET = {"gridsample": 16, "gather": 11}


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_onnx` wrote and measured.

    Attributes:
        path: str. The ONNX file.
        opset: int. ONNX opset of the default domain.
        sampler: str. `"gridsample"` or `"gather"`.
        any_size: bool. Dynamic height and width.
        batch: int or None. The fixed batch size, or None when dynamic.
        num_nodes: int. Nodes of the main graph.
        op_counts: dict. Node count per ONNX op type.
        parity: dict or None. Max differences from Keras per checked input size
            (`None` when verification was skipped).
        triton_model_dir: str or None. `DIR/<name>` when a Triton repository
            entry was written.
    """

    path: str
    opset: int
    sampler: str
    any_size: bool
    batch: int | None
    num_nodes: int
    op_counts: dict
    parity: dict | None
    triton_model_dir: str | None = None


# === Backend and loading ===


def require_tensorflow():
    """Raises `ExportError` unless Keras runs on TensorFlow and tf2onnx imports."""
    import keras

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ExportError(
            f"ONNX export needs the TensorFlow backend, but Keras is running on "
            f"{backend!r}: rerun with KERAS_BACKEND=tensorflow (a model trained on "
            f"any backend loads there)."
        )
    try:
        import onnx  # noqa: F401
        import tf2onnx  # noqa: F401
    except ImportError as error:
        raise ExportError(
            f"ONNX export needs tf2onnx and onnx ({error}); install the extra: "
            f"pip install 'keras-congeal[export]'."
        ) from error


def load_congealer(path):
    """Loads a `.keras` file holding a `Congealer`, in safe mode
    (`keras_congeal.models.saving.load_congealer`).

    Raises:
        ExportError: the file is missing, unreadable, or not a Congealer.
    """
    from keras_congeal.models.saving import load_congealer as load

    try:
        return load(path)
    except InputError as error:
        raise ExportError(str(error)) from None


# === Graph construction ===


def _gridsample_warps():
    """Routes the layers' warps through `ImageProjectiveTransformV3`.

    `BilinearSampler` (inside the DeSTNet aligner) asks
    `sampling.current_warp()` at call time; within this block those calls trace
    the single TensorFlow op that the tf2onnx handler converts to `GridSample`.
    """
    from keras_congeal.export import _tf_ops
    from keras_congeal.ops import sampling

    return sampling.warp_implementation(_tf_ops.projective_warp)


def _dynamic_pixel_matrices(delta, size):
    """`geometry.delta_to_pixel_matrix(delta, size, size)` for a tensor `size`."""
    import tensorflow as tf

    size = tf.cast(size, tf.float32)
    sy = 2.0 / (size[0] - 1.0)
    sx = 2.0 / (size[1] - 1.0)
    zero, one = tf.constant(0.0), tf.constant(1.0)
    n = tf.reshape(tf.stack([sx, zero, -one, zero, sy, -one, zero, zero, one]), (3, 3))
    n_inv = tf.reshape(
        tf.stack([1.0 / sx, zero, 1.0 / sx, zero, 1.0 / sy, 1.0 / sy, zero, zero, one]), (3, 3)
    )
    return tf.eye(3) + tf.einsum("ij,bjk,kl->bil", n_inv, delta, n)


def _serving_function(congealer, any_size, batch, sampler):
    import tensorflow as tf

    from keras_congeal.export import _tf_ops
    from keras_congeal.ops import geometry, resize, sampling

    height, width, channels = congealer.image_shape
    spec = tf.TensorSpec(
        (batch, None if any_size else height, None if any_size else width, channels),
        tf.float32,
        name=INPUT_NAME,
    )
    aligner, transform = congealer.aligner, congealer.transform

    def final_warp(images, matrices):
        if sampler == "gridsample":
            size = None if any_size else (height, width)
            return _tf_ops.projective_warp(images, matrices, size)
        if any_size:
            return _tf_ops.gather_warp(images, matrices)
        return sampling.warp(images, matrices)

    @tf.function(input_signature=[spec])
    def align(images):
        if any_size:
            small = resize.resize_antialiased(images, (height, width))
        else:
            small = images
        params = tf.cast(aligner(small), tf.float32)
        delta = geometry.params_to_delta(params, transform)
        if any_size:
            matrices = _dynamic_pixel_matrices(delta, tf.shape(images)[1:3])
        else:
            matrices = geometry.delta_to_pixel_matrix(delta, (height, width), (height, width))
        return {"aligned": final_warp(images, matrices), "transforms": matrices}

    return align, spec


def check_options(opset, batch, sampler):
    """Raises `ValueError` for an unknown sampler, an opset it does not support or a bad batch."""
    if sampler not in SAMPLERS:
        raise ValueError(f"Unknown sampler={sampler!r}. Expected one of {SAMPLERS}.")
    if not MIN_OPSET[sampler] <= int(opset) <= MAX_OPSET:
        hint = " (GridSample joined ONNX in opset 16; use sampler='gather' for older opsets)"
        raise ValueError(
            f"opset={opset} is not supported with sampler={sampler!r}: expected "
            f"{MIN_OPSET[sampler]} to {MAX_OPSET}"
            f"{hint if sampler == 'gridsample' else ''}."
        )
    if batch is not None and int(batch) < 1:
        raise ValueError(f"Expected batch=None (dynamic) or a positive int, received {batch}.")


def to_onnx(congealer, opset=DEFAULT_OPSET, any_size=False, batch=None, sampler="gridsample"):
    """Converts a `Congealer`'s aligner + warp to an `onnx.ModelProto`.

    Args:
        congealer: a built `Congealer` (TensorFlow backend).
        opset: int. ONNX opset. Defaults to 17.
        any_size: bool. Dynamic height and width: a copy of the input is
            resized to the training size with an antialiasing filter
            (`keras_congeal.ops.resize.resize_antialiased`) to predict the
            parameters, which are converted to pixel matrices for
            the input's size and warp the full-resolution input. Defaults to
            `False`.
        batch: int or None. A fixed batch size, or None for a dynamic one.
        sampler: str. `"gridsample"` (one ONNX `GridSample` per warp) or
            `"gather"` (the Keras sampler's gathers, for runtimes without
            `GridSample`). Defaults to `"gridsample"`.

    Returns:
        The checked `onnx.ModelProto`, input `images`, outputs `aligned` and
        `transforms`, with the contract's metadata.
    """
    require_tensorflow()
    check_options(opset, batch, sampler)
    import onnx
    import tf2onnx

    from keras_congeal.export import _tf_ops  # noqa: F401  (registers the tf2onnx handler)

    if not congealer.built:
        congealer.build((None,) + tuple(congealer.image_shape))
    function, spec = _serving_function(congealer, any_size, batch, sampler)
    patch = _gridsample_warps() if sampler == "gridsample" else contextlib.nullcontext()
    with patch:
        model, _ = tf2onnx.convert.from_function(
            function, input_signature=[spec], opset=int(opset)
        )
    unconverted = sorted(
        {n.op_type for n in model.graph.node if not onnx.defs.has(n.op_type, n.domain or "")}
    )
    if unconverted:
        raise ExportError(f"tf2onnx could not convert the TensorFlow ops {unconverted}")
    names = ([i.name for i in model.graph.input], [o.name for o in model.graph.output])
    if names != ([INPUT_NAME], list(OUTPUT_NAMES)):
        raise ExportError(f"unexpected graph inputs/outputs {names}")
    del model.metadata_props[:]
    for key, value in metadata(congealer.image_shape, congealer.transform, any_size).items():
        model.metadata_props.add(key=key, value=value)
    model.doc_string = (
        "keras_congeal aligner (docs/onnx_contract.md): images (B, H, W, C) float32 in "
        "[0, 1] -> aligned (B, H, W, C), transforms (B, 3, 3) pixel src_from_dst."
    )
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as error:
        reason = str(error).strip().splitlines()[0]
        raise ExportError(f"the converted model fails onnx.checker: {reason}") from error
    return model


# === Verification ===


# === Files ===


def check_writable(path, overwrite):
    """Raises `ExportError` unless `path` can be written (see `overwrite`)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    if path.is_dir():
        raise ExportError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise ExportError(f"output directory does not exist: {path.parent}")


def export_onnx(
    congealer,
    path,
    opset=DEFAULT_OPSET,
    any_size=False,
    batch=None,
    sampler="gridsample",
    verify=True,
    overwrite=False,
    verify_images=None,
    triton_repo=None,
    triton_name=None,
    triton_max_batch_size=DEFAULT_MAX_BATCH_SIZE,
):
    """Exports `congealer` to the ONNX file `path` (docs/onnx_contract.md).

    The model is converted (`to_onnx`), checked, written to a temporary file
    beside `path`, verified with onnxruntime against Keras (`verify_onnx`),
    then renamed onto `path`: a failed export leaves no file at `path` (and an
    existing one untouched).

    Args:
        congealer: a `Congealer`, or the path of a `.keras` file holding one.
        path: str or Path. The ONNX file to write.
        opset: int. Defaults to 17 (`GridSample` needs 16; tf2onnx goes to 18).
        any_size: bool. Dynamic height and width (see `to_onnx`).
        batch: int or None. Fixed batch size, or None (dynamic, the default).
        sampler: str. `"gridsample"` (default) or `"gather"`.
        verify: bool. Compare onnxruntime with Keras before writing. Defaults
            to `True`.
        overwrite: bool. Replace existing files. Defaults to `False`.
        verify_images: list of arrays (N, H, W, C) for the verification, or
            None for random images and the reference.
        triton_repo: str, Path or None. Also write a Triton model repository
            entry `triton_repo/<triton_name>/{config.pbtxt,1/model.onnx}`.
        triton_name: str. The Triton model name. Defaults to the file stem.
        triton_max_batch_size: int. `max_batch_size` of the Triton config
            (dynamic batch only). Defaults to 256.

    Returns:
        An `ExportResult`.

    Example:

    >>> result = export_onnx(congealer, "aligner.onnx", any_size=True)
    >>> result.op_counts["GridSample"]
    4
    """
    require_tensorflow()
    check_options(opset, batch, sampler)
    path = Path(path)
    check_writable(path, overwrite)
    if triton_repo is not None:
        triton_name = triton.triton_name(triton_name or path.stem)
        for target in ("config.pbtxt", "1/model.onnx"):
            target = Path(triton_repo) / triton_name / target
            if target.exists() and not overwrite:
                raise ExportError(f"{target} already exists; pass --overwrite to replace it")
    if isinstance(congealer, (str, os.PathLike)):
        congealer = load_congealer(congealer)

    model = to_onnx(congealer, opset=opset, any_size=any_size, batch=batch, sampler=sampler)
    parity = None

    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(model.SerializeToString())
        if verify:
            parity = verify_onnx(tmp, congealer, images=verify_images)
    op_counts = {}
    for node in model.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    model_dir = None
    if triton_repo is not None:
        model_dir = triton.write_triton_repo(
            path, triton_repo, triton_name, congealer.image_shape, any_size, batch,
            triton_max_batch_size, overwrite,
        )
    return ExportResult(
        path=str(path),
        opset=int(opset),
        sampler=sampler,
        any_size=bool(any_size),
        batch=batch,
        num_nodes=len(model.graph.node),
        op_counts=dict(sorted(op_counts.items())),
        parity=parity,
        triton_model_dir=str(model_dir) if model_dir is not None else None,
    )
