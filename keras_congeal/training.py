"""Run settings and the high-level training entry point.

`CongealSettings` holds everything a congealing run needs (model
hyper-parameters and run settings), with the defaults that worked best across
the paper's MNIST protocols; it is written as JSON beside the outputs.
`build_congealer` turns it into a compiled `Congealer`; `fit_congealer` trains
one on an image set (in memory or on disk) and returns it.
"""

import contextlib
import dataclasses
import json

import keras
import numpy as np

from keras_congeal.callbacks import AlignmentMonitor
from keras_congeal.datasets import ImageBatches, as_float_images, value_range_of
from keras_congeal.models import Congealer, preset_for_size
from keras_congeal.reference import choose_reference

__all__ = ["CongealSettings", "build_congealer", "fit_congealer"]


@dataclasses.dataclass(frozen=True)
class CongealSettings:
    """Settings of a congealing run. Defaults: the best found across the
    paper's MNIST protocols (perspective sigma up to 30%) on a CPU budget; see
    `benchmarks/results/sweep_gpu.md`. Notably `transform="affine"`: homography
    gains ~0.5 dB at sigma 20% but its content scale drifts at 30%.

    Attributes:
        preset: `"mnist"`, `"lfw"` or `None` (chosen from the image size).
        transform: transform family (`"homography"`, `"affine"`, ...).
        fusion: DeSTNet fusion, `"additive"` (the paper's) or `"compose"`.
        objective: `"D+C"` (the paper's), `"D"` or `"C"`.
        reference: `"medoid"`, `"mean"`, an image index, or a path to an
            image file (resolved by the caller).
        epochs, batch_size, learning_rate: the optimisation (Adam).
        lam: `lambda` of Eq. (8); gamma, k: the positional penalty;
        code_size: `|z|` (`None`: the preset's).
        ink_weight: weight of the ink-preservation penalty (0 = the paper's
            loss; see `Congealer`).
        distortion_blur: Gaussian sigma (pixels) applied to both sides of
            the distortion loss (0 = none).
        seed: seeds Keras, NumPy and the reference sample.
    """

    preset: str | None = None
    transform: str = "affine"
    fusion: str = "additive"
    objective: str = "D+C"
    reference: str | int = "medoid"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    lam: float = 1.0
    gamma: float = 1.0
    k: int = 1
    code_size: int | None = None
    ink_weight: float = 1.0
    distortion_blur: float = 0.0
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.learning_rate > 0, "learning_rate", "a number > 0"),
            (self.lam >= 0, "lam", "a number >= 0"),
            (self.gamma >= 0, "gamma", "a number >= 0"),
            (self.ink_weight >= 0, "ink_weight", "a number >= 0"),
            (self.distortion_blur >= 0, "distortion_blur", "a number >= 0"),
            (self.code_size is None or self.code_size >= 1, "code_size", "an integer >= 1"),
        ]
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"Invalid {name}={getattr(self, name)!r}: expected {expected}.")

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, config):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"Unknown settings {unknown}; expected some of {sorted(known)}.")
        return cls(**config)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def build_congealer(settings, reference, strategy=None):
    """A compiled `Congealer` for `settings`, aligning to `reference` (H, W, C).

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
    )
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
