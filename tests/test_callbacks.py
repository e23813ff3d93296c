import keras
import numpy as np
import pytest

from keras_congeal.callbacks import AlignmentMonitor
from keras_congeal.layers import DeSTNet, PenalisedAutoencoder
from keras_congeal.models import Congealer


def tiny_congealer(image):
    aligner = DeSTNet(transform="translation", num_stages=1, localisation=[[3, 4, 1]],
                      fusion_units=4)
    autoencoder = PenalisedAutoencoder(code_size=2, encoder_convs=[[3, 4]], dense_units=[8],
                                       bottleneck_channels=1)
    return Congealer(aligner, autoencoder, image, objective="D")


def test_landmark_error_by_hand_at_the_identity():
    # An untrained aligner is the identity: the landmarks stay where they are.
    # Three images; eyes 10 px apart; the nose moves by +-3 px in x in two of
    # them: spreads (0, 0, 2) px -> error 2 / 3 / 10 = 6.67%.
    images = np.random.default_rng(0).uniform(size=(4, 16, 16, 1)).astype("float32")
    model = tiny_congealer(images[0])
    model(images)
    base = np.array([[3.0, 5.0], [13.0, 5.0], [8.0, 10.0]])
    points = np.stack([base, base + [[0, 0], [0, 0], [3, 0]], base - [[0, 0], [0, 0], [3, 0]],
                       np.full((3, 2), np.nan)])  # the last image is not annotated
    monitor = AlignmentMonitor(images, landmarks=points)
    monitor.set_model(model)
    measures = monitor.measure()
    assert measures["landmark_error"] == pytest.approx(100 * 2.0 / 3.0 / 10.0)
    assert measures["scale"] == pytest.approx(1.0)


def test_landmarks_logged_every_epoch_and_checked():
    images = np.random.default_rng(1).uniform(size=(8, 16, 16, 1)).astype("float32")
    model = tiny_congealer(images[0])
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    points = np.random.default_rng(2).uniform(2, 13, (8, 3, 2))
    monitor = AlignmentMonitor(images, every=2, landmarks=points)
    history = model.fit(images, batch_size=4, epochs=4, verbose=0, callbacks=[monitor])
    assert [m["epoch"] for m in monitor.history] == [2, 4]
    assert np.isfinite(history.history["landmark_error"]).all()
    with pytest.raises(ValueError, match=r"landmarks of shape \(8, K, 2\)"):
        AlignmentMonitor(images, landmarks=points[:5])
    with pytest.raises(ValueError, match="no image"):
        AlignmentMonitor(images, landmarks=np.full((8, 3, 2), np.nan))


def _waits_for_every_step(callback):
    """Whether Keras must wait for each step's losses to call `callback` (a
    batch-end hook of its own, not declared async-safe)."""
    own_hook = type(callback).on_train_batch_end is not keras.callbacks.Callback.on_train_batch_end
    return own_hook and not getattr(callback, "async_safe", False)


def test_training_callbacks_leave_the_steps_asynchronous(tmp_path):
    # A batch-end hook made Keras wait for every step's losses (4x slower
    # training on a GPU: the device idled while the host dispatched).
    from keras_congeal.callbacks import EpochBackupAndRestore
    from keras_congeal.cli._train_and_align import _Backup, _StopAtStepEnd

    assert _waits_for_every_step(keras.callbacks.BackupAndRestore(str(tmp_path / "a")))
    for callback in (
        EpochBackupAndRestore(str(tmp_path / "b")),
        _Backup(str(tmp_path / "c")),
        _StopAtStepEnd([]),
        AlignmentMonitor(np.zeros((4, 28, 28, 1), "float32")),
    ):
        assert not _waits_for_every_step(callback), type(callback).__name__
    # Saving every N steps, the hook is needed.
    assert _waits_for_every_step(EpochBackupAndRestore(str(tmp_path / "d"), save_freq=2))


class _ScriptedMonitor(AlignmentMonitor):
    """An `AlignmentMonitor` whose measures of `ink_kept` follow a script."""

    def __init__(self, images, inks, **kwargs):
        super().__init__(images, **kwargs)
        self.inks = list(inks)

    def measure(self):
        return {"apsnr": 10.0, "ink_kept": self.inks.pop(0), "scale": 1.0}


class _WeightsAtEpochEnd(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch + 1] = [np.array(w) for w in self.model.get_weights()]


def test_collapse_restores_the_last_healthy_epoch_and_stops(recwarn):
    images = np.random.default_rng(0).uniform(size=(16, 16, 16, 1)).astype("float32")
    model = tiny_congealer(images[0])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    # Healthy at epochs 1 and 2, collapsed at 3: training stops after 3 of 6
    # epochs with epoch 2's weights.
    monitor = _ScriptedMonitor(images, [0.9, 0.8, 0.1, 0.9, 0.9, 0.9], collapse_ink=0.5,
                               restore_on_collapse=True)
    seen = _WeightsAtEpochEnd()
    history = model.fit(images, batch_size=8, epochs=6, verbose=0, callbacks=[monitor, seen])
    assert len(history.history["loss"]) == 3 and monitor.restored_epoch == 2
    for final, kept in zip(model.get_weights(), seen.weights[2], strict=True):
        np.testing.assert_array_equal(final, kept)
    assert any(not np.array_equal(a, b) for a, b in zip(seen.weights[2], seen.weights[1],
                                                        strict=True))
    assert "weights of epoch 2" in str(recwarn.pop(UserWarning).message)
    # Without restore_on_collapse: a warning, and training goes on.
    model = tiny_congealer(images[0])
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    monitor = _ScriptedMonitor(images, [0.9, 0.1, 0.9], collapse_ink=0.5)
    history = model.fit(images, batch_size=8, epochs=3, verbose=0, callbacks=[monitor])
    assert len(history.history["loss"]) == 3 and monitor.restored_epoch is None
    assert "Raise `ink_weight`" in str(recwarn.pop(UserWarning).message)
