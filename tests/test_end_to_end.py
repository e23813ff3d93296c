"""End to end: train a tiny Congealer, export it with the real exporter, align
with `keras_congeal_serving` in its own environment, compare with Keras.

The serving package never imports keras_congeal, so it runs in its own
interpreter: `$KERAS_CONGEAL_SERVING_PYTHON`, else `.venv-serving/bin/python`
beside the repository (what `make test` installs). The comparison with serving
is skipped when neither exists; the rest of the module still runs.
"""

import json
import os
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("ONNX export needs KERAS_BACKEND=tensorflow", allow_module_level=True)
pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")

from keras_congeal.data import load_demo  # noqa: E402
from keras_congeal.export import contract, export_onnx  # noqa: E402
from keras_congeal.ops import geometry, sampling  # noqa: E402
from keras_congeal.training import CongealSettings, fit_congealer  # noqa: E402
from tests.conftest import REPO  # noqa: E402

COUNT = 256

SERVING_SCRIPT = r"""
import json, sys
import numpy as np
from keras_congeal_serving import Aligner
from keras_congeal_serving.testing import translation_metadata

model, images, out = sys.argv[1:4]
aligner = Aligner(model, providers="cpu")
result = aligner.align(np.load(images), batch_size=50)
np.savez(out, aligned=result.aligned, transforms=result.transforms)
meta = aligner.metadata
print(json.dumps({
    "testing_keys": sorted(translation_metadata(28, 28, 1)),
    "parsed": [meta.format_version, meta.image_height, meta.image_width, meta.channels,
               meta.transform, meta.any_size, meta.input_name],
}))
"""


def _serving_python():
    candidate = os.environ.get("KERAS_CONGEAL_SERVING_PYTHON") or str(
        REPO / ".venv-serving" / "bin" / "python"
    )
    return candidate if Path(candidate).is_file() else None


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Congealer trained for a few seconds on the demo digits, and its export."""
    images = load_demo()["images"][:COUNT]
    # The constant rate the moire test below was calibrated with: trained with
    # the cosine decay, this 3-epoch model's antialiased and point-sampled
    # corner errors came within 5% of each other (0.049 against 0.052 px).
    settings = CongealSettings(epochs=3, batch_size=64, transform="affine", seed=0,
                               learning_rate_schedule="constant")
    model, _ = fit_congealer(images, settings, monitor_size=0, verbose=0)
    directory = tmp_path_factory.mktemp("e2e")
    result = export_onnx(model, directory / "aligner.onnx", any_size=True)
    return model, images, Path(result.path), directory


def test_serving_aligns_like_keras(trained):
    python = _serving_python()
    if python is None:
        pytest.skip("no serving environment (.venv-serving or KERAS_CONGEAL_SERVING_PYTHON)")
    model, images, onnx_path, directory = trained
    np.save(directory / "images.npy", images)
    proc = subprocess.run(
        [python, "-c", SERVING_SCRIPT, str(onnx_path), str(directory / "images.npy"),
         str(directory / "serving.npz")],
        capture_output=True, text=True, timeout=300,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    served = np.load(directory / "serving.npz")

    expected = model.align(images.astype("float32") / 255.0)
    # The training moved the images: this compares real warps, not identities.
    assert np.abs(expected["transforms"] - np.eye(3)).max() > 0.02
    # uint8 in, uint8 out: serving rounds the float output (one level at most).
    keras_uint8 = np.clip(np.round(expected["aligned"][..., 0] * 255.0), 0, 255)
    assert served["aligned"].dtype == np.uint8 and served["aligned"].shape == images.shape
    assert np.abs(served["aligned"].astype(int) - keras_uint8).max() <= 1
    scale = np.abs(expected["transforms"]).max(axis=(1, 2))
    assert (np.abs(served["transforms"] - expected["transforms"]).max(axis=(1, 2))
            / scale).max() <= 1e-4

    # The contract: what serving's test models write and what it parsed from
    # the real export are the keys and values of `keras_congeal.export.contract`.
    keys = sorted(contract.METADATA_PREFIX + key for key in contract.METADATA_KEYS)
    assert report["testing_keys"] == keys
    assert report["parsed"] == [contract.FORMAT_VERSION, 28, 28, 1, "affine", True,
                                contract.INPUT_NAME]


def test_export_metadata_is_the_contract(trained):
    import onnx

    props = {p.key: p.value for p in onnx.load(str(trained[2])).metadata_props}
    assert sorted(props) == sorted(contract.METADATA_PREFIX + k for k in contract.METADATA_KEYS)
    assert props["keras_congeal.any_size"] == "true"


def _corners(transforms, size):
    """Where `transforms` (N, 3, 3) send the corner pixels of an image of `size`."""
    h, w = size[0] - 1.0, size[1] - 1.0
    points = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], "float64").T
    mapped = np.asarray(transforms, "float64") @ points
    return mapped[:, :2] / mapped[:, 2:]


def test_any_size_matches_the_training_size_on_a_4x_copy(trained):
    """Transforms predicted from a 4x larger copy match those from the set itself.

    The copy is what a scanner at 4x the resolution sees of printed digits:
    the digits enlarged (bilinear, align-corners map: 109 = 4 * 27 + 1 pixels,
    so that the two pixel frames coincide) plus a fine print screen (stripes
    of period 4.4 large pixels, amplitude 0.15). Point-sampled back to 28x28,
    as the graph did before antialiasing, the screen folds into a moire of
    period 11 small pixels and full amplitude that the aligner takes for
    content; the antialiasing tent (half-width 4) passes 1% of it. What is left
    is the tent's blur of the digits themselves.

    Tolerance: 0.25 small pixels on every corner of every image (a quarter of a
    training pixel, ten times below the mean 2.5-pixel motion of these
    corners); measured 0.11 at most (0.16 when point-sampled: this small
    aligner is fairly robust to the moire, the mean error tells them apart).
    """
    model, images, onnx_path, _ = trained
    small = 0.15 + 0.7 * images[:64, ..., None].astype("float32") / 255.0
    size = (28, 28)
    big_size = (109, 109)
    identity = np.zeros((len(small), 3, 3), "float32")
    enlarge = geometry.delta_to_pixel_matrix(identity, size, big_size)
    big = np.asarray(keras.ops.convert_to_numpy(sampling.warp(small, enlarge, big_size)))
    rows, cols = np.mgrid[:big_size[0], :big_size[1]]
    big += (0.15 * np.cos(2 * np.pi * (rows + cols) / 4.4)).astype("float32")[..., None]

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    _, at_small = session.run(None, {"images": small})
    _, at_big = session.run(None, {"images": big})
    # The big pixel frame is the small one scaled by 108 / 27 = 4 (align
    # corners): bring the big transforms to the small frame, compare corners.
    scale = np.diag([4.0, 4.0, 1.0])
    from_big = np.linalg.inv(scale) @ at_big.astype("float64") @ scale
    expected = _corners(at_small, size)
    error = np.abs(_corners(from_big, size) - expected).max(axis=(1, 2))
    motion = np.abs(expected - _corners(np.eye(3)[None], size)).max(axis=(1, 2))
    # What the graph predicted before antialiasing: the copy point-sampled
    # back to 28x28 (bilinear, align corners: exactly the small pixels' places).
    shrink = geometry.delta_to_pixel_matrix(identity, big_size, size)
    aliased = keras.ops.convert_to_numpy(sampling.warp(big, shrink, size))
    _, at_aliased = session.run(None, {"images": np.asarray(aliased, "float32")})
    aliased_error = np.abs(_corners(at_aliased, size) - expected).max(axis=(1, 2))
    print(f"corner error: antialiased mean {error.mean():.3f} max {error.max():.3f} px; "
          f"point-sampled mean {aliased_error.mean():.3f} max {aliased_error.max():.3f} px; "
          f"corner motion mean {motion.mean():.3f} px")
    assert motion.mean() > 0.5  # the aligner moves these digits
    assert error.max() <= 0.25
    # Before the fix the graph point-sampled: its error was `aliased_error`
    # (measured mean 0.060, max 0.155 px against 0.037 and 0.113 here).
    assert error.mean() < 0.75 * aliased_error.mean()
