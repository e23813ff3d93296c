"""The example notebooks: valid nbformat 4, committed without outputs, and runnable.

The notebooks are executed here without Jupyter (nbclient and ipykernel are not
dependencies): every code cell, in order, in one fresh namespace, under the
active KERAS_BACKEND, with 1 epoch on a small subset. `IPython.display` is
replaced by a recorder, so that the cells' figures are checked too.
"""

import importlib.util
import json
import sys
import types

import keras
import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO

NOTEBOOKS = REPO / "notebooks"
QUICKSTART = NOTEBOOKS / "quickstart.ipynb"
CELL_TYPES = {"code", "markdown", "raw"}


def _load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _source(cell):
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _fake_ipython(shown):
    """An `IPython` package whose `display.display` records what it is given."""

    class RecordedImage:
        def __init__(self, filename):
            self.filename = filename

    display = types.ModuleType("IPython.display")
    display.Image = RecordedImage
    display.display = shown.append
    package = types.ModuleType("IPython")
    package.display = display
    return package, display


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_clean_nbformat4(path):
    text = path.read_text(encoding="utf-8")
    notebook = json.loads(text)
    assert notebook["nbformat"] == 4 and notebook["nbformat_minor"] >= 4
    assert notebook["metadata"]["kernelspec"]["language"] == "python"
    cells = notebook["cells"]
    assert isinstance(cells, list) and cells
    ids = [cell.get("id") for cell in cells]
    if notebook["nbformat_minor"] >= 5:
        assert all(isinstance(i, str) and 1 <= len(i) <= 64 for i in ids)
        assert len(set(ids)) == len(ids), "cell ids must be unique"
    for index, cell in enumerate(cells):
        where = f"cell {index} ({cell.get('id')})"
        assert cell["cell_type"] in CELL_TYPES, where
        assert isinstance(cell["metadata"], dict), where
        source = cell["source"]
        assert isinstance(source, str) or all(isinstance(line, str) for line in source), where
        if cell["cell_type"] == "code":
            # Committed without outputs: small, diff-friendly, no stale results.
            assert cell["outputs"] == [], f"{where} has stored outputs"
            assert cell["execution_count"] is None, f"{where} has an execution count"
            # Plain Python, so that the cells also run without IPython.
            for line in _source(cell).splitlines():
                assert not line.lstrip().startswith(("%", "!")), f"{where}: {line!r}"
        else:
            assert "outputs" not in cell and "execution_count" not in cell, where
    # As Jupyter writes it (one-space indent, sorted keys), so that saving it
    # from Jupyter after clearing outputs gives no diff.
    assert text == json.dumps(notebook, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


@pytest.mark.slow
def test_quickstart_runs(tmp_path, monkeypatch):
    output = tmp_path / "output"
    # The first cell defaults KERAS_BACKEND to tensorflow; keep it on the active one.
    monkeypatch.setenv("KERAS_BACKEND", keras.backend.backend())
    monkeypatch.setenv("KERAS_CONGEAL_NOTEBOOK_EPOCHS", "1")
    monkeypatch.setenv("KERAS_CONGEAL_NOTEBOOK_LIMIT", "128")
    monkeypatch.setenv("KERAS_CONGEAL_NOTEBOOK_OUTPUT", str(output))
    monkeypatch.chdir(tmp_path)  # anything written to a relative path stays here
    shown = []
    package, display = _fake_ipython(shown)
    monkeypatch.setitem(sys.modules, "IPython", package)
    monkeypatch.setitem(sys.modules, "IPython.display", display)

    namespace = {"__name__": "__main__"}
    for index, cell in enumerate(_load(QUICKSTART)["cells"]):
        if cell["cell_type"] != "code":
            continue
        code = compile(_source(cell), f"quickstart.ipynb[{index}:{cell.get('id')}]", "exec")
        exec(code, namespace)  # a failing cell raises here, with its name in the traceback

    assert namespace["EPOCHS"] == 1 and namespace["LIMIT"] == 128
    n_train = namespace["n_train"]
    assert namespace["x_train"].shape == (n_train, 28, 28, 1)
    assert len(namespace["x_new"]) == 128 - n_train > 0
    assert namespace["aligned"].shape == namespace["x_train"].shape
    assert namespace["transforms"].shape == (n_train, 3, 3)
    history = namespace["history"].history
    assert len(history["loss"]) == 1
    assert {"apsnr", "ink_kept", "scale", "distortion", "complexity"} <= set(history)
    summary = namespace["summary"]
    assert np.isfinite(summary["apsnr_after"]) and 0.5 < summary["ink_kept"] <= 1.05

    # Every figure was written and handed to IPython's display.
    written = {path.name for path in output.glob("*.png")}
    assert {"inputs.png", "reference.png", "mean_variance.png", "samples.png",
            "new_samples.png"} <= written
    displayed = {type(item).__name__ for item in shown}
    assert displayed == {"RecordedImage"}
    assert {item.filename for item in shown} == {str(path) for path in output.glob("*.png")}
    for path in output.glob("*.png"):
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 28
    for path in output.glob("*samples.png"):
        # Inputs on the left, aligned on the right, on one value scale: the
        # aligned digits must show about as much as the inputs.
        pixels = np.asarray(Image.open(path).convert("L"))
        half = pixels.shape[1] // 2
        bright_inputs = (pixels[:, :half] > 128).sum()
        bright_aligned = (pixels[:, half:] > 128).sum()
        assert bright_aligned > 0.5 * bright_inputs, (path.name, bright_inputs, bright_aligned)

    assert (output / "congealer.keras").is_file()
    exportable = keras.backend.backend() == "tensorflow" and all(
        importlib.util.find_spec(name) for name in ("tf2onnx", "onnx", "onnxruntime")
    )
    assert namespace["ONNX_READY"] == exportable
    assert (output / "aligner.onnx").is_file() == exportable
    assert not [p for p in tmp_path.iterdir() if p != output]
