import contextlib
import os
from pathlib import Path

import keras
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir():
    """The real data sets: `KERAS_CONGEAL_DATA`, else `../shared/data` beside the repo."""
    env = os.environ.get("KERAS_CONGEAL_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    return path if path.is_dir() else None


def in_the_pass_of(backend):
    """Marks a test whose processes choose their own Keras backend: the suite
    runs once per backend (`make test`), and such a test runs once, in the
    pass of `backend`, instead of the same processes twice."""
    return pytest.mark.skipif(
        keras.backend.backend() != backend,
        reason=f"starts its own processes with fixed backends: runs in the {backend} pass",
    )


@pytest.fixture
def data_dir():
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data not found (set KERAS_CONGEAL_DATA)")
    return path


@contextlib.contextmanager
def float64_backend():
    """Lets the backend compute in float64 (JAX needs x64 switched on)."""
    if keras.backend.backend() == "jax":
        import jax

        with jax.enable_x64(True):
            yield
    else:
        yield


def gradient(fn, x):
    """d sum(fn(x)) / dx on the active backend, as a NumPy array."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.reduce_sum(fn(x))
        return tape.gradient(y, x).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return np.asarray(jax.grad(lambda v: jnp.sum(fn(v)))(jnp.asarray(x)))
    if backend == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        fn(x).sum().backward()
        return x.grad.numpy()
    pytest.skip(f"no gradient helper for backend {backend}")


def finite_difference(fn, x, eps=1e-6):
    """Central differences of sum(fn(x)) in float64 NumPy."""
    x = np.array(x, dtype="float64")
    grad = np.zeros_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        plus = float(np.sum(keras.ops.convert_to_numpy(fn(x))))
        flat[i] = old - eps
        minus = float(np.sum(keras.ops.convert_to_numpy(fn(x))))
        flat[i] = old
        g[i] = (plus - minus) / (2 * eps)
    return grad
