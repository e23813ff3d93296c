"""`keras_congeal.data` as a package: its names, and that importing it (as
the command line does to check its arguments) does not load Keras."""

import subprocess
import sys
from pathlib import Path

import keras_congeal.data as data
from keras_congeal.data import perturb

_ROOT = Path(__file__).resolve().parents[2]


def test_lazy_names_are_perturbs():
    # Every public function perturb defines is exported by the package.
    defined = {name for name, value in vars(perturb).items()
               if callable(value) and not name.startswith("_")
               and getattr(value, "__module__", None) == perturb.__name__}
    assert defined <= set(perturb.__all__), defined - set(perturb.__all__)
    for name in perturb.__all__:
        assert getattr(data, name) is getattr(perturb, name)
    assert data.perturb is perturb
    assert "load_demo" in data.__all__ and callable(data.load_demo)


def _in_process(code):
    return subprocess.run(
        [sys.executable, "-c", code], cwd=_ROOT, capture_output=True, text=True, timeout=120
    )


def test_importing_the_package_and_its_command_does_not_load_keras():
    result = _in_process(
        "import sys, keras_congeal.data, keras_congeal.data.mnist, keras_congeal.cli.data\n"
        "print(sorted(m for m in ('keras', 'tensorflow', 'jax') if m in sys.modules))"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_module_checks_mnist_before_keras_loads(tmp_path):
    # `python -m keras_congeal.data` with a missing MNIST: one line, and Keras
    # never imported (it printed TensorFlow's start-up lines and took seconds).
    argv = [
        "keras_congeal.data",
        "mnist",
        "--digit",
        "3",
        "--n",
        "4",
        "--mnist",
        str(tmp_path / "missing"),
        "--output",
        str(tmp_path / "x.npy"),
    ]
    result = _in_process(
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n"
        "    runpy.run_module('keras_congeal.data', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('keras' in sys.modules)\n"
    )
    assert result.returncode == 2
    assert result.stdout.strip() == "False"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("python -m keras_congeal.data: error: cannot read MNIST: ")
    assert not lines[0].endswith(". (see --help)")
