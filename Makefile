# Two commands on a fresh machine:
#   make demo   # installs into .venv and congeals the built-in demo set -> demo-output/
#   make test   # installs into .venv and .venv-serving and runs every test suite
# Each target creates its own virtual environment; nothing is downloaded at run time.

PYTHON ?= python3
VENV ?= .venv
SERVING_VENV ?= .venv-serving
PIP_FLAGS ?= -q --disable-pip-version-check
# TensorFlow (CPU build) is the default backend; JAX is installed to run the tests
# on a second backend.
EXTRAS ?= tensorflow-cpu,jax,export,test

.PHONY: demo test test-tensorflow test-jax test-serving test-benchmarks clean

$(VENV)/.installed: pyproject.toml benchmarks/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(VENV)/bin/python -m pip install $(PIP_FLAGS) -e ".[$(EXTRAS)]" -r benchmarks/requirements.txt
	touch $@

$(SERVING_VENV)/.installed: serving/pyproject.toml
	$(PYTHON) -m venv $(SERVING_VENV)
	$(SERVING_VENV)/bin/python -m pip install $(PIP_FLAGS) --upgrade pip
	$(SERVING_VENV)/bin/python -m pip install $(PIP_FLAGS) -e "./serving[cpu,http,hdf5,ray,test]"
	touch $@

demo: $(VENV)/.installed
	KERAS_BACKEND=tensorflow $(VENV)/bin/python -m keras_congeal congeal --output demo-output --overwrite

test: test-tensorflow test-jax test-serving test-benchmarks

test-tensorflow: $(VENV)/.installed
	KERAS_BACKEND=tensorflow $(VENV)/bin/python -m pytest -q tests

test-jax: $(VENV)/.installed
	KERAS_BACKEND=jax $(VENV)/bin/python -m pytest -q tests

test-serving: $(SERVING_VENV)/.installed
	cd serving && ../$(SERVING_VENV)/bin/python -m pytest -q

test-benchmarks: $(VENV)/.installed
	KERAS_BACKEND=jax $(VENV)/bin/python -m pytest -q benchmarks/tests

clean:
	rm -rf $(VENV) $(SERVING_VENV) demo-output
