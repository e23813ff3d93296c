"""Loading saved models: safe mode, and a Keras without known safe-mode bypasses."""

import ast
import re
import sys
from importlib import metadata

import keras
import pytest

from keras_congeal.io import InputError
from keras_congeal.models.saving import load_congealer
from tests.conftest import REPO

# The first Keras release without the known safe_mode bypasses: CVE-2025-8747 and
# CVE-2025-9906 (fixed in 3.11.0), CVE-2025-9905 (fixed in 3.11.3).
SAFE_KERAS = (3, 11, 3)


def _version(text):
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def test_keras_floor_excludes_versions_with_safe_mode_bypasses():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (spec,) = [d for d in project["dependencies"] if re.match(r"keras\b", d)]
    floor = re.search(r">=\s*([\d.]+)", spec)
    assert floor and _version(floor.group(1)) >= SAFE_KERAS, spec
    assert _version(metadata.version("keras")) >= SAFE_KERAS


def test_a_model_carrying_code_is_refused(tmp_path):
    # A Lambda layer stores Python bytecode; safe mode refuses to load it.
    model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2.0)])
    path = tmp_path / "lambda.keras"
    model.save(path)
    with pytest.raises(InputError, match=r"lambda\.keras: cannot load it as a Keras model.*"
                       r"safe_mode"):
        load_congealer(path)


def test_a_file_that_is_not_a_keras_archive_is_named_so(tmp_path):
    # Keras reports such a file as "File not found: filepath=...".
    path = tmp_path / "m.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(InputError, match=r"m\.keras: not a \.keras model \(expected the zip"):
        load_congealer(path)


def _load_model_calls(path):
    """The `load_model(...)` calls of a source file, as `ast.Call` nodes."""
    tree = ast.parse(path.read_text())
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "load_model"]


def test_every_load_model_call_is_the_safe_one():
    # One home for loading untrusted files: keras_congeal.models.saving.
    calls = {
        path.relative_to(REPO).as_posix(): _load_model_calls(path)
        for folder in ("keras_congeal", "benchmarks", "serving")
        for path in (REPO / folder).rglob("*.py")
    }
    calls = {name: found for name, found in calls.items() if found}
    assert list(calls) == ["keras_congeal/models/saving.py"]
    (call,) = calls["keras_congeal/models/saving.py"]
    safe = [k.value.value for k in call.keywords if k.arg == "safe_mode"]
    assert safe == [True]
