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
from tests.conftest import REPO, in_the_pass_of

# Every test here starts its own processes (JAX, or TensorFlow for the error).
pytestmark = in_the_pass_of("jax")

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


def _congeal(args, cwd, backend="jax", **popen):
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO),
           "CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    return subprocess.Popen([sys.executable, "-m", "keras_congeal", "congeal",
                             *map(str, args)], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_cli_two_processes_process_0_writes_the_outputs(tmp_path):
    pytest.importorskip("jax")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "set.npy", (rng.random((16, 28, 28)) * 255).astype("uint8"))
    port = _free_port()
    runs = [_congeal([tmp_path / "set.npy", "--output", tmp_path / f"out{i}", "--epochs", 1,
                      "--batch-size", 8, "--coordinator", f"localhost:{port}",
                      "--num-processes", 2, "--process-id", i], tmp_path) for i in (0, 1)]
    try:
        done = [run.communicate(timeout=120) for run in runs]
    finally:
        for run in runs:
            run.kill()
    for run, (_out, err) in zip(runs, done, strict=True):
        assert run.returncode == 0, err[-3000:]
    assert "process 1: trained; process 0 writes the outputs" in done[1][0]
    assert (tmp_path / "out0" / "model.keras").exists()
    assert (tmp_path / "out0" / "aligned.npy").exists()
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out1.partial").exists()


@pytest.mark.parametrize("flags, expected", [
    (["--coordinator", "localhost:1"], "go together"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"],
     "--process-id 2: expected 0 to N-1"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "0",
      "--resume"], "--resume is for one host"),
])
def test_cli_multi_host_flag_errors_are_one_line(tmp_path, flags, expected):
    bad = _congeal(["--output", tmp_path / "out", *flags], tmp_path)
    _out, err = bad.communicate(timeout=60)
    assert bad.returncode == 2 and expected in err.splitlines()[-1], err
    assert not (tmp_path / "out").exists()


def test_cli_multi_host_needs_jax(tmp_path):
    pytest.importorskip("tensorflow")
    bad = _congeal(["--output", tmp_path / "out", "--coordinator", "localhost:1",
                    "--num-processes", "2", "--process-id", "0"], tmp_path,
                   backend="tensorflow")
    _out, err = bad.communicate(timeout=120)
    assert bad.returncode == 1, err
    assert err.splitlines()[-1] == ("keras-congeal: error: --coordinator: Multi-host "
                                    "training needs the jax backend, not tensorflow (set "
                                    "KERAS_BACKEND=jax).")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
