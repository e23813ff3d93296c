"""Packaging: no TensorFlow/Keras, the metadata parser, the extras scheme."""

import pathlib
import re
import subprocess
import sys

import pytest

from keras_congeal_serving import ModelError, ModelMetadata
from keras_congeal_serving.testing import translation_metadata

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "keras_congeal_serving"
FORBIDDEN = ("tensorflow", "keras", "tf2onnx", "jax", "torch")


def test_import_does_not_load_tensorflow_or_keras():
    code = (
        "import sys\n"
        "import keras_congeal_serving, keras_congeal_serving.batch, keras_congeal_serving.server\n"
        "import keras_congeal_serving.sources, keras_congeal_serving.__main__\n"
        "import keras_congeal_serving.ray_align\n"
        "keras_congeal_serving.Aligner  # noqa\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plain_import_is_light():
    code = (
        "import sys, keras_congeal_serving\n"
        "heavy = [m for m in ('onnxruntime', 'fastapi', 'uvicorn', 'h5py', 'PIL') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sources_never_import_tensorflow_or_keras():
    pattern = re.compile(r"^\s*(import|from)\s+(tensorflow|keras|tf2onnx)\b", re.M)
    for path in PACKAGE.rglob("*.py"):
        assert not pattern.search(path.read_text()), path


def test_extras_keep_onnxruntime_out_of_the_base_dependencies():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]
    assert not any(d.startswith("onnxruntime") for d in project["dependencies"])
    extras = project["optional-dependencies"]
    assert extras["cpu"][0].startswith("onnxruntime>=")
    assert extras["gpu"][0].startswith("onnxruntime-gpu>=")
    assert not any(d.split(">")[0].split("<")[0] in FORBIDDEN for e in extras.values() for d in e)
    assert project["scripts"]["keras-congeal-serving"] == "keras_congeal_serving.__main__:main"


def test_metadata_from_props():
    props = translation_metadata(28, 32, 3, any_size=True)
    props["keras_congeal.value_range"] = "-1,1"
    props["other.key"] = "ignored"
    metadata = ModelMetadata.from_props(props)
    assert (metadata.image_height, metadata.image_width, metadata.channels) == (28, 32, 3)
    assert metadata.any_size is True
    assert metadata.value_range == (-1.0, 1.0)
    assert metadata.to_dict()["value_range"] == [-1.0, 1.0]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"keras_congeal.format_version": None}, "not a keras_congeal export"),
        ({"keras_congeal.format_version": "2"}, "format version 2"),
        ({"keras_congeal.image_height": "x"}, "malformed"),
        ({"keras_congeal.any_size": "maybe"}, "any_size"),
        ({"keras_congeal.value_range": "1,0"}, "inconsistent"),
    ],
)
def test_metadata_errors(change, message):
    props = translation_metadata(8, 8, 1)
    for key, value in change.items():
        if value is None:
            props.pop(key)
        else:
            props[key] = value
    with pytest.raises(ModelError, match=message):
        ModelMetadata.from_props(props)


def test_console_script():
    script = pathlib.Path(sys.executable).parent / "keras-congeal-serving"
    if not script.exists():
        pytest.skip("console script not installed next to this interpreter")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("keras-congeal-serving ")
