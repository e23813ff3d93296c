"""Data parallel training (`devices=`) and the device-resident input path.

Each check runs in a subprocess: TensorFlow's logical CPU devices and JAX's
host device count must be set before the framework starts.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_congeal.datasets import ImageBatches
from tests.conftest import REPO

# One step of batch 8 on one device, then on two (TensorFlow: two logical CPU
# devices under MirroredStrategy; JAX: two host devices under DataParallel),
# from the same initial weights: the weights after the step must agree.
_ONE_STEP = r"""
import os, sys
import numpy as np
backend = os.environ["KERAS_BACKEND"]
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_congeal.training import CongealSettings, fit_congealer, local_devices

assert len(local_devices("all")) == 2, local_devices("all")
rng = np.random.default_rng(0)
images = (rng.random((8, 28, 28)) * 255).astype("uint8")
settings = CongealSettings(objective="D", epochs=1, batch_size=8, learning_rate=1e-2,
                           reference=0)
runs = [(None, "auto"), (2, False)] + ([(2, True)] if backend == "jax" else [])
weights = []
for devices, device_data in runs:
    model, history = fit_congealer(images, settings, monitor_size=0, verbose=0,
                                   devices=devices, device_data=device_data)
    weights.append([np.asarray(w) for w in model.get_weights()])
    print(devices, device_data, history.history["loss"], flush=True)

for other in weights[1:]:
    for a, b in zip(weights[0], other, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
print("same weights")
"""


def _run(backend, script, extra_env=None):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": "", **(extra_env or {})}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_one_step_on_two_devices_equals_one_step_on_one(backend):
    if backend != keras.backend.backend():
        pytest.skip(f"a {backend} process: runs in the {backend} pass")
    pytest.importorskip(backend)
    done = _run(backend, _ONE_STEP,
                {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "same weights" in done.stdout


def test_image_batches_cut_the_last_batch_to_a_multiple():
    images = np.zeros((11, 4, 4), "uint8")
    batches = ImageBatches(images, batch_size=4, shuffle=False, multiple_of=2)
    assert [len(batches[i]) for i in range(len(batches))] == [4, 4, 2]
    # 13 = 4 + 4 + 4 + 1: a last batch of one image cannot be split in two.
    batches = ImageBatches(np.zeros((13, 4, 4), "uint8"), batch_size=4, multiple_of=2)
    assert len(batches) == 3 and {len(batches[i]) for i in range(3)} == {4}
    with pytest.raises(ValueError, match="multiple"):
        ImageBatches(images, batch_size=4, multiple_of=3)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="device-resident data is JAX's")
def test_device_batches_equal_host_batches():
    from keras_congeal.datasets import DeviceImageBatches

    rng = np.random.default_rng(1)
    images = (rng.random((23, 5, 5)) * 255).astype("uint8")
    host = ImageBatches(images, batch_size=4, seed=3)
    device = DeviceImageBatches(images, batch_size=4, seed=3)
    for _epoch in range(2):
        assert len(host) == len(device) == 6
        for i in range(len(host)):
            np.testing.assert_allclose(np.asarray(device[i][0]), host[i], rtol=1e-6)
        host.on_epoch_end()
        device.on_epoch_end()
    floats = images.astype("float32") / 255
    floats[7, 1, 1] = np.nan
    with pytest.raises(ValueError, match="Images 0..22 contain NaN"):
        DeviceImageBatches(floats, batch_size=4)
