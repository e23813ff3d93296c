"""Export a trained `Congealer`'s aligner to ONNX (format of docs/onnx_contract.md).

The exported graph maps `images` (batch, H, W, C), float32 in [0, 1], to
`aligned` (same shape) and `transforms` (batch, 3, 3), the pixel `src_from_dst`
matrices in the input's own pixel frame. Every warp (the final one and those
inside the DeSTNet aligner) is a single ONNX `GridSample` (bilinear, zeros
padding, `align_corners=1`), not a cascade of gathers. The exported model is
checked with `onnx.checker` and, by default, run with onnxruntime and compared
with the Keras model before it is written (atomically).

Usage:

    # Dynamic batch, training size, opset 17, verified against Keras:
    python -m keras_congeal.export congealer.keras aligner.onnx

    # Any input size (the graph resizes a copy to predict the transform and
    # warps the full-resolution input), plus a Triton model repository:
    python -m keras_congeal.export congealer.keras aligner.onnx --any-size \\
        --triton-repo model_repository --triton-name faces

    # A fixed batch of 64, gather-based sampler (runtimes without GridSample):
    keras-congeal-export congealer.keras aligner.onnx --batch 64 \\
        --sampler gather --opset 13 --overwrite

The export needs the TensorFlow backend (tf2onnx converts TensorFlow graphs);
the model may have been trained on any backend. The command line selects
TensorFlow itself; from Python, set `KERAS_BACKEND=tensorflow` before importing
Keras.
"""

import argparse
import contextlib
import dataclasses
import os
import re
import shutil
import sys
from pathlib import Path

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

FORMAT_VERSION = 1
SAMPLERS = ("gridsample", "gather")
INPUT_NAME = "images"
OUTPUT_NAMES = ("aligned", "transforms")
DEFAULT_OPSET = 17
# tf2onnx 1.17 converts up to opset 18; the gather graph needs 11 (GatherND,
# Resize with align_corners), GridSample 16.
MAX_OPSET = 18
MIN_OPSET = {"gridsample": 16, "gather": 11}
# Parity gates of the verification: max |onnx - keras| on `aligned` (values in
# [0, 1]) and max |onnx - keras| / max |keras| per transform matrix.
ALIGNED_TOLERANCE = 1e-4
TRANSFORMS_TOLERANCE = 1e-4


class ExportError(Exception):
    """An export that cannot proceed, with a one-line reason for the user."""


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


def _require_tensorflow():
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
    from keras_congeal.io import InputError
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
    from keras_congeal import _onnx_ops
    from keras_congeal.ops import sampling

    return sampling.warp_implementation(_onnx_ops.projective_warp)


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

    from keras_congeal import _onnx_ops
    from keras_congeal.ops import geometry, sampling

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
            return _onnx_ops.projective_warp(images, matrices, size)
        if any_size:
            return _onnx_ops.gather_warp(images, matrices)
        return sampling.warp(images, matrices)

    @tf.function(input_signature=[spec])
    def align(images):
        if any_size:
            small = _onnx_ops.resize_align_corners(images, (height, width))
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


def _metadata(congealer, any_size):
    from keras_congeal import __version__

    height, width, channels = congealer.image_shape
    return {
        "keras_congeal.format_version": str(FORMAT_VERSION),
        "keras_congeal.version": __version__,
        "keras_congeal.image_height": str(height),
        "keras_congeal.image_width": str(width),
        "keras_congeal.channels": str(channels),
        "keras_congeal.transform": congealer.transform,
        "keras_congeal.value_range": "0,1",
        "keras_congeal.any_size": "true" if any_size else "false",
        "keras_congeal.input_name": INPUT_NAME,
    }


def _check_options(opset, batch, sampler):
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
            resized (bilinear, `align_corners=True`) to the training size to
            predict the parameters, which are converted to pixel matrices for
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
    _require_tensorflow()
    _check_options(opset, batch, sampler)
    import onnx
    import tf2onnx

    from keras_congeal import _onnx_ops  # noqa: F401  (registers the tf2onnx handler)

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
    for key, value in _metadata(congealer, any_size).items():
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


def _keras_reference(congealer, images):
    """Keras outputs for `images` of any size, as the exported graph defines them."""
    import numpy as np
    from keras import ops

    from keras_congeal.ops import geometry, sampling

    height, width = congealer.image_shape[:2]
    size = images.shape[1:3]
    if tuple(size) == (height, width):
        result = congealer.align(images)
        return result["aligned"], result["transforms"]
    identity = ops.zeros((len(images), 3, 3), "float32")
    resize = geometry.delta_to_pixel_matrix(identity, size, (height, width))
    small = sampling.warp(ops.convert_to_tensor(images), resize, (height, width))
    params = congealer.aligner(small)
    transforms = congealer.pixel_transforms(params, size, size)
    aligned = sampling.warp(
        ops.convert_to_tensor(images), ops.convert_to_tensor(transforms.astype("float32")), size
    )
    return np.asarray(ops.convert_to_numpy(aligned)), transforms


def _sample_images(congealer, batch, any_size, seed=0):
    """Random [0, 1] images (and the reference) at the sizes to check."""
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(seed)
    height, width, channels = congealer.image_shape
    count = batch or 5
    sizes = [(height, width)]
    if any_size:
        sizes.append((2 * height + 1, (3 * width) // 2))
    samples = []
    for size in sizes:
        images = rng.random((count,) + size + (channels,), dtype=np.float32)
        if size == (height, width):
            reference = np.asarray(ops.convert_to_numpy(congealer.reference), "float32")
            images[0] = np.clip(reference, 0.0, 1.0)
        samples.append(images)
        if batch is None and count > 1:
            samples.append(images[:1])
    return samples


def verify_onnx(
    model,
    congealer,
    images=None,
    aligned_tolerance=ALIGNED_TOLERANCE,
    transforms_tolerance=TRANSFORMS_TOLERANCE,
):
    """Runs the ONNX model with onnxruntime (CPU) and compares it with Keras.

    Args:
        model: an `onnx.ModelProto`, or the path of an ONNX file.
        congealer: the `Congealer` it was exported from.
        images: list of arrays (N, H, W, C) in [0, 1] to check, or None for
            random images (and the reference) at the training size, plus a
            larger size when the model was exported with `--any-size`.
        aligned_tolerance: float. Max abs difference allowed on `aligned`.
        transforms_tolerance: float. Max relative difference allowed on each
            transform matrix (`max |a - b| / max |b|`).

    Returns:
        A dict `{"HxW/batch": {"aligned_max_abs_diff": ..,
        "transforms_max_rel_diff": ..}}`.

    Raises:
        ExportError: a difference exceeds its tolerance, or the outputs are
            not finite.
    """
    import numpy as np
    import onnx
    import onnxruntime as ort

    if isinstance(model, onnx.ModelProto):
        source = model.SerializeToString()
        props = {p.key: p.value for p in model.metadata_props}
    else:
        source = str(model)
        props = {p.key: p.value for p in onnx.load(source, load_external_data=False).metadata_props}
    any_size = props.get("keras_congeal.any_size") == "true"
    try:
        session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own exception types
        raise ExportError(f"onnxruntime cannot load the exported model: {error}") from error
    batch = session.get_inputs()[0].shape[0]
    batch = batch if isinstance(batch, int) else None
    if images is None:
        images = _sample_images(congealer, batch, any_size)
    report = {}
    for sample in images:
        sample = np.asarray(sample, dtype="float32")
        try:
            aligned, transforms = session.run(list(OUTPUT_NAMES), {INPUT_NAME: sample})
        except Exception as error:
            raise ExportError(f"onnxruntime failed on the exported model: {error}") from error
        expected_aligned, expected_transforms = _keras_reference(congealer, sample)
        key = f"{sample.shape[1]}x{sample.shape[2]}/batch{len(sample)}"
        if not (np.all(np.isfinite(aligned)) and np.all(np.isfinite(transforms))):
            raise ExportError(f"verification failed at {key}: the ONNX outputs are not finite")
        aligned_diff = float(np.max(np.abs(aligned - expected_aligned)))
        scale = np.max(np.abs(expected_transforms), axis=(1, 2))
        transforms_diff = float(
            np.max(np.max(np.abs(transforms - expected_transforms), axis=(1, 2)) / scale)
        )
        report[key] = {
            "aligned_max_abs_diff": aligned_diff,
            "transforms_max_rel_diff": transforms_diff,
        }
        if aligned_diff > aligned_tolerance or transforms_diff > transforms_tolerance:
            raise ExportError(
                f"verification failed at {key}: onnxruntime differs from Keras by "
                f"{aligned_diff:.3g} on aligned (tolerance {aligned_tolerance:g}) and "
                f"{transforms_diff:.3g} relative on transforms (tolerance "
                f"{transforms_tolerance:g})"
            )
    return report


# === Files ===


def _check_writable(path, overwrite):
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    if path.is_dir():
        raise ExportError(f"{path} is a directory")
    if not path.parent.is_dir():
        raise ExportError(f"output directory does not exist: {path.parent}")


def _write_atomically(path, write):
    """Calls `write(tmp_path)`, then renames the temporary file onto `path`.

    The file is created by `write`, so its permissions follow the umask, as
    every other output's (`keras_congeal.io.atomic_file`).
    """
    from keras_congeal.io import atomic_file

    with atomic_file(path) as tmp:
        write(Path(tmp))


_TRITON_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _triton_name(name):
    if not _TRITON_NAME.match(name or ""):
        raise ExportError(
            f"invalid Triton model name {name!r}: use letters, digits, '_', '.', '-'"
        )
    return name


def triton_config(name, image_shape, any_size, batch=None, max_batch_size=256):
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
        '    name: "aligned"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {dims(image_dims)} ]",
        "  },",
        "  {",
        '    name: "transforms"',
        "    data_type: TYPE_FP32",
        f"    dims: [ {dims([3, 3])} ]",
        "  }",
        "]",
    ]
    if batch is None:
        text += ["dynamic_batching {", "}"]
    return "\n".join(text) + "\n"


def write_triton_repo(onnx_path, repo, name, image_shape, any_size, batch=None,
                      max_batch_size=256, overwrite=False):
    """Writes `repo/<name>/config.pbtxt` and `repo/<name>/1/model.onnx`.

    Returns:
        The model directory `repo/<name>` (a `Path`).
    """
    model_dir = Path(repo) / _triton_name(name)
    targets = [model_dir / "config.pbtxt", model_dir / "1" / "model.onnx"]
    for target in targets:
        if target.exists() and not overwrite:
            raise ExportError(f"{target} already exists; pass --overwrite to replace it")
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    config = triton_config(name, image_shape, any_size, batch, max_batch_size)
    _write_atomically(targets[0], lambda tmp: tmp.write_text(config))
    _write_atomically(targets[1], lambda tmp: shutil.copyfile(onnx_path, tmp))
    return model_dir


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
    triton_max_batch_size=256,
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
    _require_tensorflow()
    _check_options(opset, batch, sampler)
    path = Path(path)
    _check_writable(path, overwrite)
    if triton_repo is not None:
        triton_name = _triton_name(triton_name or path.stem)
        for target in ("config.pbtxt", "1/model.onnx"):
            target = Path(triton_repo) / triton_name / target
            if target.exists() and not overwrite:
                raise ExportError(f"{target} already exists; pass --overwrite to replace it")
    if isinstance(congealer, (str, os.PathLike)):
        congealer = load_congealer(congealer)

    model = to_onnx(congealer, opset=opset, any_size=any_size, batch=batch, sampler=sampler)
    parity = None

    def write(tmp):
        nonlocal parity
        tmp.write_bytes(model.SerializeToString())
        if verify:
            parity = verify_onnx(tmp, congealer, images=verify_images)

    _write_atomically(path, write)
    op_counts = {}
    for node in model.graph.node:
        op_counts[node.op_type] = op_counts.get(node.op_type, 0) + 1
    model_dir = None
    if triton_repo is not None:
        model_dir = write_triton_repo(
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


# === Command line ===


def _batch(value):
    if value == "dynamic":
        return None
    try:
        batch = int(value)
    except ValueError:
        batch = 0
    if batch < 1:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer, got {value!r}")
    return batch


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-congeal-export",
        description="Export a trained Congealer (.keras) to ONNX (docs/onnx_contract.md).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Usage:", 1)[1],
    )
    parser.add_argument("model", help="the trained Congealer, a .keras file")
    parser.add_argument("output", help="the ONNX file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset (default {DEFAULT_OPSET}; GridSample needs >= 16, "
                             f"tf2onnx supports <= {MAX_OPSET})")
    parser.add_argument("--batch", type=_batch, default=None, metavar="dynamic|N",
                        help="batch dimension: 'dynamic' (default) or a fixed size")
    parser.add_argument("--any-size", action="store_true",
                        help="accept any image height and width (the transform is predicted "
                             "on a copy resized to the training size)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="gridsample",
                        help="'gridsample' (one GridSample per warp, default) or 'gather' "
                             "(for runtimes without GridSample)")
    parser.add_argument("--triton-repo", metavar="DIR",
                        help="also write DIR/<name>/config.pbtxt and DIR/<name>/1/model.onnx")
    parser.add_argument("--triton-name", metavar="NAME",
                        help="Triton model name (default: the output file's stem)")
    parser.add_argument("--triton-max-batch-size", type=int, default=256, metavar="N",
                        help="max_batch_size of the Triton config (default 256)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip the onnxruntime-vs-Keras parity check")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.triton_name is not None and args.triton_repo is None:
        parser.error("--triton-name needs --triton-repo")
    if args.triton_max_batch_size < 1:
        parser.error("--triton-max-batch-size must be a positive integer")
    lowest = MIN_OPSET[args.sampler]
    if not lowest <= args.opset <= MAX_OPSET:
        hint = "; use --sampler gather below 16" if args.sampler == "gridsample" else ""
        parser.error(
            f"--opset {args.opset} is not supported with --sampler {args.sampler}: expected "
            f"{lowest} to {MAX_OPSET}{hint}"
        )
    # Cheap checks first: importing TensorFlow takes seconds.
    try:
        if not Path(args.model).is_file():
            raise ExportError(
                f"model file not found: {args.model}" if not Path(args.model).exists()
                else f"model path is not a file: {args.model}"
            )
        _check_writable(args.output, args.overwrite)
    except ExportError as error:
        print(f"keras-congeal-export: error: {error}", file=sys.stderr)
        return 1
    if "keras" not in sys.modules:
        # tf2onnx converts TensorFlow graphs: select the backend before Keras
        # is imported (a model trained on JAX or PyTorch loads on TensorFlow).
        if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
            print(f"keras-congeal-export: using the TensorFlow backend for the export "
                  f"(KERAS_BACKEND was {os.environ['KERAS_BACKEND']!r})", file=sys.stderr)
        os.environ["KERAS_BACKEND"] = "tensorflow"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)
    try:
        _require_tensorflow()
        congealer = load_congealer(args.model)
        result = export_onnx(
            congealer,
            args.output,
            opset=args.opset,
            any_size=args.any_size,
            batch=args.batch,
            sampler=args.sampler,
            verify=not args.no_verify,
            overwrite=args.overwrite,
            triton_repo=args.triton_repo,
            triton_name=args.triton_name,
            triton_max_batch_size=args.triton_max_batch_size,
        )
    except ExportError as error:
        print(f"keras-congeal-export: error: {error}", file=sys.stderr)
        return 1
    ops = ", ".join(
        f"{k} {v}" for k, v in result.op_counts.items() if k.startswith(("Grid", "Gather"))
    )
    print(f"wrote {result.path}: opset {result.opset}, {result.num_nodes} nodes ({ops}), "
          f"batch {result.batch or 'dynamic'}, any size: {result.any_size}")
    if result.parity is None:
        print("not verified (--no-verify)")
    for key, diffs in (result.parity or {}).items():
        print(f"verified {key}: aligned max abs diff {diffs['aligned_max_abs_diff']:.2e}, "
              f"transforms max rel diff {diffs['transforms_max_rel_diff']:.2e}")
    if result.triton_model_dir:
        print(f"wrote Triton model {result.triton_model_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
