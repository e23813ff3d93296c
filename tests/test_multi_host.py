"""Multi-host training on JAX: two processes on localhost, one CPU device each.

Each process joins with `initialize_multi_host` (JAX's distributed runtime;
gloo collectives on CPU), trains with `fit_congealer(devices="all")` on its
slice of every global batch, and must end with the weights of one process
training the same global batches on two local devices (four steps of Adam:
against one device, the sharded gradient reductions differ in the last bits
and Adam amplifies them to ~1e-2 after four steps, on one host just as on
two; one step matches one device to 1e-5, see test_data_parallel.py).
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from keras_congeal.datasets import ImageBatches
from tests.conftest import REPO

# argv: role ("single" or the process id), port, output .npz.
_TRAIN = r"""
import sys
import numpy as np
role, port, out = sys.argv[1:]
from keras_congeal.training import (CongealSettings, fit_congealer, initialize_multi_host,
                                    is_main_process, local_devices, process_index_and_count)
if role != "single":
    initialize_multi_host(f"localhost:{port}", 2, int(role))
    assert process_index_and_count() == (int(role), 2)
    assert len(local_devices("all")) == 2 and is_main_process() == (role == "0")
rng = np.random.default_rng(0)
images = (rng.random((16, 28, 28)) * 255).astype("uint8")
settings = CongealSettings(objective="D", epochs=2, batch_size=8, learning_rate=1e-2,
                           reference=0)
model, history = fit_congealer(images, settings, monitor_size=0, verbose=0,
                               devices=2 if role == "single" else "all")
np.savez(out, *model.get_weights())
# The model predicts on this process's device after training.
predicted = model.predict(images[:2, ..., None] / 255, verbose=0)
print(role, history.history["loss"], {k: np.shape(v) for k, v in predicted.items()})
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_image_batches_processes_read_slices_of_the_same_batches():
    images = np.arange(22 * 2 * 2, dtype="uint8").reshape(22, 2, 2)
    whole = ImageBatches(images, batch_size=8, seed=4, multiple_of=2)
    parts = [ImageBatches(images, batch_size=8, seed=4, multiple_of=2, process=(i, 2))
             for i in range(2)]
    for _epoch in range(2):
        assert len(whole) == len(parts[0]) == len(parts[1]) == 3
        for i in range(len(whole)):
            assert len(parts[0][i]) == len(whole[i]) // 2
            np.testing.assert_array_equal(np.concatenate([p[i] for p in parts]), whole[i])
        for batches in (whole, *parts):
            batches.on_epoch_end()
    with pytest.raises(ValueError, match="Invalid process"):
        ImageBatches(images, batch_size=8, multiple_of=1, process=(0, 2))
    with pytest.raises(ValueError, match="Invalid process"):
        ImageBatches(images, batch_size=8, multiple_of=2, process=(2, 2))


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    port = str(_free_port())
    roles = ["0", "1", "single"]
    runs = [subprocess.Popen([sys.executable, "-c", _TRAIN, role, port,
                              str(tmp_path / f"{role}.npz")],
                             env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count="
                                  + ("2" if role == "single" else "1")},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for role in roles]
    try:
        done = [run.communicate(timeout=120) for run in runs]
    finally:
        for run in runs:
            run.kill()
    for role, run, (_out, err) in zip(roles, runs, done, strict=True):
        assert run.returncode == 0, f"{role}: {err[-3000:]}"
    weights = {role: np.load(tmp_path / f"{role}.npz") for role in roles}
    assert len(weights["single"].files) > 0
    for name in weights["single"].files:
        np.testing.assert_array_equal(weights["0"][name], weights["1"][name])
        np.testing.assert_allclose(weights["0"][name], weights["single"][name],
                                   rtol=1e-4, atol=1e-4)
