"""Callbacks that watch the alignment while a `Congealer` trains."""

import warnings

import keras
import numpy as np

from keras_congeal.metrics import apsnr as compute_apsnr
from keras_congeal.metrics import content_scale, ink_kept

__all__ = ["AlignmentMonitor"]


class AlignmentMonitor(keras.callbacks.Callback):
    """Measures the alignment of a fixed sample at the end of every epoch.

    Adds to the epoch's logs (so they show in the progress bar and in
    `History`): `apsnr` (dB, Eq. 9), `ink_kept` (`sum aligned / sum input`) and
    `scale` (median linear scale of the aligned content relative to the
    input). APSNR alone can be gamed by shrinking the content or pushing it out
    of the frame; the other two expose that. If `ink_kept` falls below
    `collapse_ink` a warning says the run is collapsing.

    Args:
        images: array (N, H, W, C), floats in [0, 1]: the sample to watch
            (a few hundred images are plenty).
        every: int. Measure every `every` epochs. Defaults to 1.
        collapse_ink: float. Warn below this ink ratio. Defaults to 0.5.
    """

    def __init__(self, images, every=1, collapse_ink=0.5):
        super().__init__()
        self.images = np.asarray(images, dtype="float32")
        self.every = int(every)
        self.collapse_ink = float(collapse_ink)
        self.history = []

    def measure(self):
        result = self.model.align(self.images, batch_size=512)
        scales = content_scale(result["transforms"], self.images.shape[1:3])
        return {
            "apsnr": compute_apsnr(result["aligned"], data_range=1.0),
            "ink_kept": ink_kept(self.images, result["aligned"]),
            "scale": float(np.median(scales)),
        }

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        measures = self.measure()
        self.history.append({"epoch": epoch + 1, **measures})
        if logs is not None:
            logs.update(measures)
        if measures["ink_kept"] < self.collapse_ink:
            warnings.warn(
                f"Epoch {epoch + 1}: the aligned images keep {measures['ink_kept']:.0%} of "
                "the input's content: the alignment is collapsing (content shrunk or "
                "warped out of the frame). Raise `ink_weight` or lower the learning rate.",
                stacklevel=2,
            )
