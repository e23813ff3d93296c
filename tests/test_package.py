"""The package as a user imports it: lazy names, registration with Keras."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.models.test_congealer import blobs, small_congealer

# Loads a saved Congealer in a fresh interpreter after `import keras_congeal`
# only (no keras_congeal submodule imported by hand), Keras imported before
# or after it.
_LOAD = """
import sys
if sys.argv[2] == "keras-first":
    import keras
    import keras_congeal
else:
    import keras_congeal
    import keras
model = keras.saving.load_model(sys.argv[1])
print(type(model).__name__, type(model.aligner).__name__, type(model.autoencoder).__name__)
"""


@pytest.mark.parametrize("order", ["keras-first", "keras_congeal-first"])
def test_import_registers_the_classes_for_load_model(tmp_path, order):
    images, _ = blobs(4)
    model = small_congealer(images[0])
    model(images)
    path = tmp_path / "m.keras"
    model.save(path)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD, str(path), order], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["Congealer", "DeSTNet", "PenalisedAutoencoder"]


def test_import_alone_does_not_load_keras():
    # `import keras_congeal` (and so the command line's --help) stays light.
    code = "import sys, keras_congeal; print('keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
