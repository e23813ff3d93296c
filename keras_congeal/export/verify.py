"""Checking an exported graph: onnxruntime against the Keras model it came from."""

from keras_congeal.export.contract import INPUT_NAME, METADATA_PREFIX, OUTPUT_NAMES, ExportError

__all__ = ["ALIGNED_TOLERANCE", "TRANSFORMS_TOLERANCE", "keras_reference", "verify_onnx"]

# Parity gates of the verification: max |onnx - keras| on `aligned` (values in
# [0, 1]) and max |onnx - keras| / max |keras| per transform matrix.
ALIGNED_TOLERANCE = 1e-4
TRANSFORMS_TOLERANCE = 1e-4


def keras_reference(congealer, images):
    """Keras outputs for `images` of any size, as the exported graph defines them.

    At the training size: `congealer.align`. At another size (`--any-size`):
    the parameters predicted from a copy resized to the training size
    (`keras_congeal.ops.resize.resize_antialiased`), converted to pixel
    matrices of the input's size, and the full-size input warped by them.

    Returns:
        `(aligned, transforms)`, NumPy arrays.
    """
    import numpy as np
    from keras import ops

    from keras_congeal.ops import resize, sampling

    height, width = congealer.image_shape[:2]
    size = images.shape[1:3]
    if tuple(size) == (height, width):
        result = congealer.align(images)
        return result["aligned"], result["transforms"]
    small = resize.resize_antialiased(ops.convert_to_tensor(images), (height, width))
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
    any_size = props.get(METADATA_PREFIX + "any_size") == "true"
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
        expected_aligned, expected_transforms = keras_reference(congealer, sample)
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
