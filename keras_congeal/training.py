"""The high-level training entry point.

`build_congealer` turns `CongealSettings` (see `keras_congeal.settings`) into a
compiled `Congealer`; `fit_congealer` trains one on an image set (in memory or
on disk) and returns it.

Data parallel training (`devices=`): `"all"` or a number of local devices
(GPUs; CPU devices when there is no accelerator). On TensorFlow the model is
built under a `tf.distribute.MirroredStrategy` over them; on JAX under a
`keras.distribution.DataParallel` (set while building and while fitting). In
both, `settings.batch_size` is the *global* batch, split evenly across the
devices, and the learning rate is unchanged: one step on N devices is the
step on one device with the same global batch (every loss is a per-image
mean, so it reduces exactly). To use the devices' extra memory, raise the
batch (and, if you wish, the learning rate with it, linearly).

Multi-host training (JAX): call `initialize_multi_host(coordinator,
num_processes, process_id)` in every process before anything else touches
JAX, then `fit_congealer(..., devices="all")` with the same images and
settings in every process. The `DataParallel` mesh then spans the devices of
all processes; each process reads only its slice of every global batch
(`ImageBatches(process=...)`), and the trained weights are the same in
every process (write outputs from process 0 only: `is_main_process()`).
"""

import contextlib
import math

import keras
import numpy as np

from keras_congeal.callbacks import AlignmentMonitor
from keras_congeal.constants import COSINE_FINAL_FRACTION
from keras_congeal.datasets import (
    DeviceImageBatches,
    ImageBatches,
    as_float_images,
    value_range_of,
)
from keras_congeal.models import Congealer
from keras_congeal.presets import preset_for_size
from keras_congeal.reference import choose_reference
from keras_congeal.settings import CongealSettings

__all__ = [
    "CongealSettings",
    "build_congealer",
    "fit_congealer",
    "initialize_multi_host",
    "is_main_process",
    "local_devices",
    "process_index_and_count",
    "schedule_learning_rate",
]

# Epochs measured by the `AlignmentMonitor` of `fit_congealer`, at most.
MONITORED_EPOCHS = 30
# On JAX, a set whose bytes fit in this fraction of the device's memory is
# put on the device once and batches are sliced there (`DeviceImageBatches`);
# without a known device memory (CPU), up to DEVICE_DATA_MAX_BYTES.
DEVICE_DATA_FRACTION = 0.25
DEVICE_DATA_MAX_BYTES = 512 * 2**20


def initialize_multi_host(coordinator, num_processes, process_id):
    """Joins this process to a multi-host JAX computation.

    Wraps `keras.distribution.initialize` (itself `jax.distributed.initialize`).
    Call it once per process, first thing, with the same `coordinator` and
    `num_processes` everywhere; afterwards `local_devices("all")` lists the
    devices of every process and `fit_congealer(..., devices="all")` trains
    on all of them.

    Args:
        coordinator: str. `"HOST:PORT"` of process 0, reachable from every
            process (process 0 listens on PORT).
        num_processes: int >= 1. Processes taking part.
        process_id: int in `[0, num_processes)`. This process's index.

    Raises:
        ValueError: a bad argument, or a backend other than JAX.
    """
    if keras.backend.backend() != "jax":
        raise ValueError(f"Multi-host training needs the jax backend, not "
                         f"{keras.backend.backend()} (set KERAS_BACKEND=jax).")
    host, _, port = str(coordinator).rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Invalid coordinator={coordinator!r}: expected 'HOST:PORT'.")
    if isinstance(num_processes, bool) or not isinstance(num_processes, int) \
            or num_processes < 1:
        raise ValueError(f"Invalid num_processes={num_processes!r}: expected an integer >= 1.")
    if isinstance(process_id, bool) or not isinstance(process_id, int) \
            or not 0 <= process_id < num_processes:
        raise ValueError(f"Invalid process_id={process_id!r}: expected an integer in "
                         f"[0, {num_processes}).")
    keras.distribution.initialize(coordinator, num_processes, process_id)


def process_index_and_count():
    """`(index, count)` of this process among the JAX processes; `(0, 1)`
    on one host or another backend."""
    if keras.backend.backend() != "jax":
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def is_main_process():
    """Whether this process writes the outputs (process 0, or the only one)."""
    return process_index_and_count()[0] == 0


def local_devices(devices):
    """The local devices that `devices` names, or `None` for the default one.

    Args:
        devices: `None` or 1 (the backend's default device), `"all"` (every
            local accelerator; the CPU devices when there is none) or an int
            N >= 1 (the first N of them).

    Returns:
        `None` (one device), or a list of device names (TensorFlow) or JAX
        devices, two or more.

    Raises:
        ValueError: N is not a positive integer, or more than there are.

    After `initialize_multi_host`, `devices` must be `None` or `"all"`: both
    name every device of every process.
    """
    if process_index_and_count()[1] > 1:
        import jax

        if devices not in (None, "all"):
            raise ValueError(f"Invalid devices={devices!r}: with {jax.process_count()} "
                             "processes, expected 'all' (every device of every process).")
        return list(jax.devices())
    if devices is None:
        return None
    if devices != "all" and (isinstance(devices, bool) or not isinstance(devices, int)
                             or devices < 1):
        raise ValueError(f"Invalid devices={devices!r}: expected 'all' or an integer >= 1.")
    if devices == 1:
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        found = ([d.name for d in tf.config.list_logical_devices("GPU")]
                 or [d.name for d in tf.config.list_logical_devices("CPU")])
    elif backend == "jax":
        import jax

        found = jax.devices()
    else:
        raise ValueError(f"devices={devices!r}: data parallel training needs the tensorflow "
                         f"or jax backend, not {backend}.")
    if devices != "all" and devices > len(found):
        raise ValueError(f"Invalid devices={devices}: only {len(found)} local device(s) "
                         "found.")
    found = list(found) if devices == "all" else list(found)[:devices]
    return found if len(found) > 1 else None


@contextlib.contextmanager
def _distributed(devices):
    """Where a model for `devices` (a `local_devices` list or `None`) is built
    and trained: a `MirroredStrategy` scope on TensorFlow, a `DataParallel`
    distribution on JAX (the previous one restored afterwards). Yields the
    TensorFlow strategy, or `None`."""
    if devices is None:
        yield None
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        strategy = tf.distribute.MirroredStrategy(devices)
        with strategy.scope():
            yield strategy
    else:
        previous = keras.distribution.distribution()
        # With several processes, each feeds its own slice of every batch
        # (`ImageBatches(process=...)`): the data is already sharded.
        keras.distribution.set_distribution(keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=process_index_and_count()[1] == 1))
        try:
            yield None
        finally:
            keras.distribution.set_distribution(previous)


def build_congealer(settings, reference, strategy=None, devices=None):
    """A built and compiled `Congealer` for `settings`, aligning to `reference`
    (H, W, C).

    With `devices` (see `local_devices`; `"all"` or N), the model is built for
    data parallel training on them (train it with `fit_congealer(...,
    devices=...)` and the same `devices`). With a `tf.distribute` `strategy`
    instead (e.g. `MirroredStrategy` over the GPUs), the model and its
    optimizer are created in its scope. XLA compilation is left off under a
    TensorFlow strategy (XLA under `MirroredStrategy` fails on CPU devices).
    """
    reference = np.asarray(reference, "float32")
    if strategy is not None:
        if devices is not None:
            raise ValueError("Pass `strategy` or `devices`, not both.")
        with strategy.scope():
            return _build(settings, reference, strategy)
    with _distributed(local_devices(devices)) as strategy:
        return _build(settings, reference, strategy)


def _build(settings, reference, strategy):
    preset = settings.preset or preset_for_size(*reference.shape)
    model = Congealer.from_preset(
        preset,
        precision=settings.precision,
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
                  model=None, initial_epoch=0, strategy=None, devices=None,
                  device_data="auto"):
    """Trains a `Congealer` on `images` with no labels.

    Args:
        images: array-like (N, H, W[, C]), uint8 or floats in [0, 1]; a
            NumPy array, a memory map or an h5py dataset (read batch by batch).
        settings: `CongealSettings`. Defaults to `CongealSettings()` (the
            digit defaults; `CongealSettings.for_preset("lfw")` for faces).
            Trains `settings.epochs_for(len(images))` epochs, with the
            learning rate of `settings.learning_rate_schedule` over all of
            their steps (`schedule_learning_rate`, also on a `model` passed
            in whose optimizer has a constant rate).
        monitor_size: int. Images of a fixed random sample whose APSNR, ink
            kept and content scale are logged every epoch (0: none, and no
            collapse guard: see `settings.collapse_ink`).
        callbacks: extra Keras callbacks (e.g. `BackupAndRestore`).
        verbose: passed to `fit`.
        model: an existing `Congealer` to continue training, or `None`.
        initial_epoch: int. Epoch to resume from.
        strategy: a `tf.distribute.Strategy` (TensorFlow backend), e.g.
            `tf.distribute.MirroredStrategy()` to train on all local GPUs;
            `settings.batch_size` is then the global batch, split across
            replicas. Every loss is a per-image mean, so it reduces exactly.
            After `initialize_multi_host`, all devices of all processes are
            used (`devices` must be `None` or `"all"`), each process reads its
            slice of every batch, `device_data` is off and so is the monitor
            (its metrics would need the whole sample in every process).
        devices: `None`, `"all"` or N: data parallel training on the local
            devices (see `local_devices` and the module's docstring), on both
            backends. A `model` passed in must have been built by
            `build_congealer` with the same `devices`.
        device_data: `"auto"`, `True` or `False`. On JAX, put the whole set
            on the device(s) once and slice the batches there
            (`DeviceImageBatches`: no host-to-device copy per step, the same
            batches in the same order). `"auto"`: when it fits a quarter of
            the device memory (512 MiB without an accelerator).

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
        model = build_congealer(settings, reference, strategy=strategy, devices=devices)
    callbacks = list(callbacks)
    epochs = settings.epochs_for(len(images))
    process = process_index_and_count()
    if monitor_size and process[1] == 1:
        rng = np.random.default_rng(settings.seed)
        picks = np.sort(rng.choice(len(images), min(monitor_size, len(images)), replace=False))
        # About MONITORED_EPOCHS measures whatever the number of epochs.
        every = max(1, round(epochs / MONITORED_EPOCHS))
        callbacks.insert(0, AlignmentMonitor(as_float_images(images[picks], data_range),
                                             every=every,
                                             collapse_ink=settings.collapse_ink,
                                             restore_on_collapse=settings.collapse_ink > 0))
    resolved = local_devices(devices)
    replicas = len(resolved) if resolved else 1
    batches_class = (DeviceImageBatches if _use_device_data(images, device_data)
                     else ImageBatches)
    with _distributed(resolved if keras.backend.backend() == "jax" else None):
        # Every batch is full (the last one completed from the set's start):
        # one compiled step. On JAX a batch must divide among the devices: a
        # set smaller than a batch is cut to a multiple of their number (at
        # most `replicas - 1` images skipped).
        batches = batches_class(images, settings.batch_size, shuffle=True, seed=settings.seed,
                                multiple_of=replicas if keras.backend.backend() == "jax" else 1,
                                process=process, wrap_last=True)
        schedule_learning_rate(model.optimizer, settings, steps=epochs * len(batches))
        history = model.fit(batches, epochs=epochs,
                            initial_epoch=initial_epoch,
                            callbacks=callbacks, verbose=verbose)
    if process[1] > 1:
        # The weights are replicated on the devices of every process; copied
        # to this process's default device, the model predicts and saves as
        # on one host.
        model.set_weights(model.get_weights())
    return model, history


def schedule_learning_rate(optimizer, settings, steps):
    """Gives `optimizer` the learning-rate schedule of `settings` for a run
    of `steps` steps (`settings.learning_rate_schedule`).

    `"cosine"` replaces a constant rate by a cosine decay from it to
    `COSINE_FINAL_FRACTION` of it at `steps`, counted by the optimizer's
    `iterations` (restored with the optimizer by `BackupAndRestore`, so a
    resumed run continues the decay); an optimizer that already follows a
    schedule keeps it. `"constant"` leaves the optimizer as it is.
    """
    if settings.learning_rate_schedule == "constant":
        return
    initial = optimizer.get_config()["learning_rate"]
    if not isinstance(initial, float):  # a schedule, serialized: the caller's
        return
    optimizer.learning_rate = keras.optimizers.schedules.CosineDecay(
        initial, decay_steps=max(1, steps), alpha=COSINE_FINAL_FRACTION
    )


def _use_device_data(images, device_data):
    """Whether `fit_congealer` slices the batches on the device."""
    if device_data not in ("auto", True, False):
        raise ValueError(f"Invalid device_data={device_data!r}: expected 'auto', True or "
                         "False.")
    if keras.backend.backend() != "jax":
        if device_data is True:
            raise ValueError("device_data=True needs the jax backend.")
        return False
    if process_index_and_count()[1] > 1:
        if device_data is True:
            raise ValueError("device_data=True is for one host: with several processes, "
                             "each reads its slice of every batch from `images`.")
        return False
    if device_data != "auto":
        return device_data
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    budget = DEVICE_DATA_FRACTION * limit if limit else DEVICE_DATA_MAX_BYTES
    nbytes = math.prod(images.shape) * np.dtype(images.dtype).itemsize
    return nbytes <= budget


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
