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
