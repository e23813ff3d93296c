"""Aligning an input set into an output directory: `aligned.npy` and
`transforms.npy`, written a batch at a time (bounded memory) and measured as
written."""

import os
import time

import keras
import numpy as np

from keras_congeal.datasets import as_float_images
from keras_congeal.io import NpyWriter
from keras_congeal.metrics import AlignmentMeter

__all__ = ["align_into"]


def _restore(aligned, dtype):
    """Aligned floats in [0, 1] -> the output dtype (uint8 rounded, else float32)."""
    if dtype == np.uint8:
        return np.clip(np.rint(aligned * 255.0), 0, 255).astype(np.uint8)
    return aligned.astype(np.float32)


def align_into(model, inputs, directory, batch_size, verbose):
    """Aligns `inputs` with `model`, writing `aligned.npy` and `transforms.npy`.

    Reads, aligns and writes `batch_size` images at a time, so memory stays
    bounded. The statistics are measured on what is written (uint8 output
    after rounding).

    Args:
        model: a `Congealer`.
        inputs: an `InputSet`.
        directory: str. Where to write.
        batch_size: int. Images per forward pass.
        verbose: bool. Show a `keras.utils.Progbar`.

    Returns:
        `(meter, seconds)`: the `AlignmentMeter` (on the input's and the
        output's values, in the input's range) and the wall time.
    """
    start_time = time.perf_counter()
    images = inputs.images
    count = inputs.count
    out_dtype = np.uint8 if inputs.dtype == np.uint8 else np.float32
    meter = AlignmentMeter(data_range=inputs.data_range)
    progress = keras.utils.Progbar(count, verbose=1 if verbose else 0, unit_name="image")
    aligned_path = os.path.join(directory, "aligned.npy")
    transforms_path = os.path.join(directory, "transforms.npy")
    with NpyWriter(aligned_path, images.shape, out_dtype) as aligned_out, \
            NpyWriter(transforms_path, (count, 3, 3), np.float64) as transforms_out:
        for start in range(0, count, batch_size):
            raw = np.asarray(images[start:start + batch_size])
            batch = as_float_images(raw, inputs.data_range)
            result = model.align(batch, batch_size=batch_size)
            aligned = _restore(result["aligned"], out_dtype).reshape(raw.shape)
            aligned_out.write(aligned)
            transforms_out.write(result["transforms"])
            meter.update(raw, aligned, result["transforms"])
            progress.add(len(raw))
    return meter, time.perf_counter() - start_time
