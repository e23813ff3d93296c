"""The high-level training entry point.

`build_congealer` turns `CongealSettings` (see `keras_congeal.settings`) into a
compiled `Congealer`; `fit_congealer` trains one on an image set (in memory or
on disk) and returns it.
"""

import contextlib

import keras
import numpy as np

from keras_congeal.callbacks import AlignmentMonitor
from keras_congeal.datasets import ImageBatches, as_float_images, value_range_of
from keras_congeal.models import Congealer
from keras_congeal.presets import preset_for_size
from keras_congeal.reference import choose_reference
from keras_congeal.settings import CongealSettings

__all__ = ["CongealSettings", "build_congealer", "fit_congealer"]


def build_congealer(settings, reference, strategy=None):
    """A built and compiled `Congealer` for `settings`, aligning to `reference`
    (H, W, C).

    With a `tf.distribute` `strategy` (e.g. `MirroredStrategy` over the GPUs),
    the model and its optimizer are created in its scope, and XLA compilation
    is left off (XLA under `MirroredStrategy` fails on CPU devices).
    """
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        return _build(settings, np.asarray(reference, "float32"), strategy)


def _build(settings, reference, strategy):
    preset = settings.preset or preset_for_size(*reference.shape[:2])
    model = Congealer.from_preset(
        preset,
        reference=reference,
        transform=settings.transform,
        fusion=settings.fusion,
        code_size=settings.code_size,
        gamma=settings.gamma,
        k=settings.k,
        objective=settings.objective,
        lam=settings.lam,
        ink_weight=settings.ink_weight,
        distortion_blur=settings.distortion_blur,
        scale_weight=settings.scale_weight,
        distortion_features=settings.distortion_features,
        distortion_target=settings.distortion_target,
        distortion_window=settings.distortion_window,
        centring_weight=settings.centring_weight,
    )
    # Built now (the reference has the images' shape), so that callbacks
    # that restore weights before the first batch, such as
    # `BackupAndRestore`, work with a fresh model.
    model.build((None, *reference.shape))
    model.compile(
        optimizer=keras.optimizers.Adam(settings.learning_rate),
        jit_compile=False if strategy is not None else "auto",
    )
    return model


def fit_congealer(images, settings=None, monitor_size=512, callbacks=(), verbose="auto",
                  model=None, initial_epoch=0, strategy=None):
    """Trains a `Congealer` on `images` with no labels.

    Args:
        images: array-like (N, H, W[, C]), uint8 or floats in [0, 1]; a
            NumPy array, a memory map or an h5py dataset (read batch by batch).
        settings: `CongealSettings`. Defaults to `CongealSettings()`.
        monitor_size: int. Images of a fixed random sample whose APSNR, ink
            kept and content scale are logged every epoch (0: none).
        callbacks: extra Keras callbacks (e.g. `BackupAndRestore`).
        verbose: passed to `fit`.
        model: an existing `Congealer` to continue training, or `None`.
        initial_epoch: int. Epoch to resume from.
        strategy: a `tf.distribute.Strategy` (TensorFlow backend), e.g.
            `tf.distribute.MirroredStrategy()` to train on all local GPUs;
            `settings.batch_size` is then the global batch, split across
            replicas. Every loss is a per-image mean, so it reduces exactly.

    Returns:
        `(model, history)`: the trained `Congealer` and the `History`.
    """
    settings = settings or CongealSettings()
    if len(images) == 0:
        raise ValueError("`images` is empty: expected at least one image.")
    keras.utils.set_random_seed(settings.seed)
    data_range = value_range_of(images.dtype)
    if model is None:
        reference_images = images if images.ndim == 4 else _LazyChannel(images)
        reference, _ = choose_reference(reference_images, settings.reference,
                                        data_range=data_range, seed=settings.seed)
        model = build_congealer(settings, reference, strategy=strategy)
    callbacks = list(callbacks)
    if monitor_size:
        rng = np.random.default_rng(settings.seed)
        picks = np.sort(rng.choice(len(images), min(monitor_size, len(images)), replace=False))
        callbacks.insert(0, AlignmentMonitor(as_float_images(images[picks], data_range)))
    batches = ImageBatches(images, settings.batch_size, shuffle=True, seed=settings.seed)
    history = model.fit(batches, epochs=settings.epochs, initial_epoch=initial_epoch,
                        callbacks=callbacks, verbose=verbose)
    return model, history


class _LazyChannel:
    """Adds the channel axis to (N, H, W) images on read, without a copy."""

    def __init__(self, images):
        self.images = images
        self.shape = (*images.shape, 1)
        self.dtype = images.dtype

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return np.asarray(self.images[index])[..., None]
