import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_congeal.datasets import ImageBatches, as_float_images, value_range_of
from keras_congeal.training import CongealSettings, fit_congealer, schedule_learning_rate
from tests.conftest import REPO


def test_settings_validate_and_round_trip():
    settings = CongealSettings(epochs=3, transform="homography")
    assert CongealSettings.from_dict(json.loads(settings.to_json())) == settings
    with pytest.raises(ValueError, match="epochs"):
        CongealSettings(epochs=0)
    with pytest.raises(ValueError, match="learning_rate"):
        CongealSettings(learning_rate=-1.0)
    with pytest.raises(ValueError, match=r"Invalid transform='rigid': expected one of \['transl"):
        CongealSettings(transform="rigid")
    with pytest.raises(ValueError, match="Invalid distortion_target='median'"):
        CongealSettings(distortion_target="median")
    with pytest.raises(ValueError, match="Unknown settings"):
        CongealSettings.from_dict({"epochz": 3})
    with pytest.raises(ValueError, match="Invalid learning_rate_schedule='step'"):
        CongealSettings(learning_rate_schedule="step")


def test_settings_files_from_before_the_schedule_read_as_constant():
    # Runs written before the field existed trained at a constant rate.
    old = CongealSettings().to_dict()
    del old["learning_rate_schedule"]
    assert CongealSettings.from_dict(old).learning_rate_schedule == "constant"
    assert CongealSettings().learning_rate_schedule == "cosine"
    assert CongealSettings.for_preset("lfw").learning_rate_schedule == "constant"


def _learning_rate(optimizer):
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def test_cosine_schedule_decays_to_a_tenth_by_the_last_step():
    optimizer = keras.optimizers.Adam(2e-3)
    optimizer.build([keras.Variable(np.zeros(2, "float32"))])
    schedule_learning_rate(optimizer, CongealSettings(), steps=40)
    for step in (0, 10, 20, 30, 40, 55):
        optimizer.iterations.assign(step)
        # Hand computation: 0.1 + 0.9 * (1 + cos(pi * t)) / 2, t = min(step / 40, 1).
        t = min(step / 40, 1.0)
        expected = 2e-3 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t)))
        np.testing.assert_allclose(_learning_rate(optimizer), expected, rtol=1e-5)
    # A schedule already there is the caller's, and "constant" changes nothing.
    schedule_learning_rate(optimizer, CongealSettings(), steps=4)
    np.testing.assert_allclose(_learning_rate(optimizer), 2e-4, rtol=1e-5)
    constant = keras.optimizers.Adam(2e-3)
    schedule_learning_rate(constant, CongealSettings(learning_rate_schedule="constant"), 40)
    assert constant.get_config()["learning_rate"] == pytest.approx(2e-3)


def test_image_batches_read_lazily_and_convert():
    images = (np.arange(10 * 4 * 4) % 256).astype("uint8").reshape(10, 4, 4)
    batches = ImageBatches(images, batch_size=4, shuffle=False)
    assert len(batches) == 3
    first = batches[0]
    assert first.shape == (4, 4, 4, 1) and first.dtype == np.float32
    np.testing.assert_allclose(first[..., 0], images[:4] / 255.0, rtol=1e-6)
    assert batches[2].shape[0] == 2
    assert len(ImageBatches(images, batch_size=4, drop_remainder=True)) == 2
    with pytest.raises(ValueError, match="empty"):
        ImageBatches(images[:0])
    bad = np.ones((3, 4, 4, 1), "float32")
    bad[2, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ImageBatches(bad, batch_size=3, shuffle=False)[0]


def test_value_ranges():
    assert value_range_of(np.uint8) == 255.0 and value_range_of(np.float32) == 1.0
    with pytest.raises(ValueError, match="Unsupported image dtype"):
        value_range_of(np.int64)
    assert as_float_images(np.full((1, 2, 2, 3), 255, np.uint8)).max() == 1.0


@pytest.mark.slow
def test_fit_congealer_improves_perturbed_mnist(data_dir):
    """Real MNIST, digit 3, perspective sigma 20%: a short run on this CPU must
    raise APSNR clearly while keeping the ink and the scale (no collapse)."""
    from keras_congeal.data import mnist_digit_subset, perspective_perturbation
    from keras_congeal.metrics import AlignmentMeter

    originals = mnist_digit_subset(3, 300, seed=0, path=data_dir / "mnist.npz")
    images, _ = perspective_perturbation(originals, 0.2, seed=0)
    model, history = fit_congealer(images, CongealSettings(epochs=10), monitor_size=0,
                                   verbose=0)
    x = as_float_images(images)
    result = model.align(x)
    summary = AlignmentMeter().update(x, result["aligned"], result["transforms"]).summary()
    assert summary["apsnr_after"] > summary["apsnr_before"] + 1.5, summary
    assert summary["ink_kept"] > 0.8, summary
    assert 0.85 < summary["content_scale_median"] < 1.15, summary


def test_fit_congealer_resumes_with_backup_and_restore(tmp_path):
    """A fresh model is built before `fit`, so Keras' `BackupAndRestore`
    restores a killed run: the second call trains only the missing epoch,
    from the saved weights."""
    rng = np.random.default_rng(0)
    images = (rng.random((24, 28, 28)) * 255).astype("uint8")
    settings = CongealSettings(objective="D", batch_size=8, epochs=1)
    backup = str(tmp_path / "backup")

    def fit(epochs):
        return fit_congealer(
            images, settings.replace(epochs=epochs), monitor_size=0, verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(backup, delete_checkpoint=False)])

    first, history = fit(1)
    assert first.built and len(history.history["loss"]) == 1
    resumed, history = fit(2)
    assert len(history.history["loss"]) == 1  # epoch 2 only
    assert history.epoch == [1]
    # The optimizer's steps came back with the backup: the cosine over the
    # 2 x 3 steps of the run ends at a tenth, as in one uninterrupted run.
    assert int(keras.ops.convert_to_numpy(resumed.optimizer.iterations)) == 6
    np.testing.assert_allclose(_learning_rate(resumed.optimizer), 1e-4, rtol=1e-5)


_MIRRORED = """
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_congeal.training import CongealSettings, fit_congealer
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
rng = np.random.default_rng(0)
images = (rng.random((48, 16, 16)) * 255).astype("uint8")
settings = CongealSettings(epochs=2, batch_size=16, preset="mnist")
model, history = fit_congealer(images, settings, monitor_size=16, verbose=0, strategy=strategy)
assert model.distribute_strategy.num_replicas_in_sync == 2
assert np.isfinite(history.history["loss"]).all()
print("replicas", model.distribute_strategy.num_replicas_in_sync)
"""


@pytest.mark.slow
def test_mirrored_strategy_trains_on_two_replicas():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("MirroredStrategy is TensorFlow's")
    env = {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "tensorflow"}
    out = subprocess.run([sys.executable, "-c", _MIRRORED], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "replicas 2" in out.stdout


def test_top_level_names_load_lazily():
    import keras_congeal

    assert keras_congeal.CongealSettings is CongealSettings
    assert keras_congeal.fit_congealer is fit_congealer
    with pytest.raises(AttributeError, match="no attribute"):
        keras_congeal.NotAThing  # noqa: B018
