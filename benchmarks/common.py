"""Helpers shared by the benchmark scripts: run records (machine, versions,
command), atomic and incremental JSON results, markdown tables, the
perturbed-MNIST cells of the paper's protocols and the alignment measures of
one method's output.

Nothing here imports Keras at import time: the baselines' worker processes
(`benchmarks.scalability`) must run without a Keras backend.
"""

import datetime
import importlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = [
    "RESULTS_DIR",
    "PACKAGES",
    "run_record",
    "package_versions",
    "machine_info",
    "script_parser",
    "log",
    "write_json_atomic",
    "read_json",
    "read_results_file",
    "ResultStore",
    "markdown_table",
    "fmt",
    "resolve_mnist",
    "alignment_measures",
    "rss_bytes",
    "current_rss_bytes",
    "peak_rss_from_proc",
    "proc_status_bytes",
    "keras_backend_info",
    "write_npz_atomic",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]

# Distribution names whose versions every result file records.
PACKAGES = (
    "numpy", "scipy", "keras", "tensorflow", "tensorflow-cpu", "jax", "jaxlib", "torch",
    "onnx", "onnxruntime", "onnxruntime-gpu", "tf2onnx", "scikit-image", "rasl",
    "threadpoolctl", "matplotlib",
)


# === Run records ===


def package_versions(names=PACKAGES):
    """Installed versions of `names` (distributions), `None` when absent."""
    from importlib import metadata

    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        versions["keras_congeal"] = importlib.import_module("keras_congeal").__version__
    except ImportError:
        versions["keras_congeal"] = None
    return versions


def _git(*args):
    """`git -C REPO ARGS...`'s output, stripped; None without git or a repository."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True,
            timeout=10, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_commit():
    return _git("rev-parse", "HEAD") or None


def _git_tree_modified():
    """Whether tracked files differ from the commit (a copied working tree,
    e.g. on the device machine, runs code the commit does not hold); None
    without git."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info():
    """CPU count, platform, CPU model, memory and load of this machine."""
    info = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        info["load_average_at_start"] = list(os.getloadavg())
    except OSError:
        info["load_average_at_start"] = None
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_bytes"] = pages * page_size
    except (ValueError, OSError):
        info["memory_bytes"] = None
    return info


def keras_backend_info():
    """Keras backend and its devices (imports Keras)."""
    import keras

    backend = keras.backend.backend()
    devices = []
    try:
        if backend == "jax":
            import jax

            devices = [f"{d.platform}:{getattr(d, 'device_kind', d)}" for d in jax.devices()]
        elif backend == "tensorflow":
            import tensorflow as tf

            devices = [d.name for d in tf.config.list_logical_devices()]
        elif backend == "torch":
            import torch

            devices = ["cpu"] + [
                torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
            ]
    except Exception as error:  # device listing is informative only
        devices = [f"unknown ({error})"]
    return {"backend": backend, "devices": devices, "floatx": keras.backend.floatx()}


def portable_path(path):
    """A path as it may be published: relative to the working directory
    when it lies under it or next to it (`../shared/data`), else only its
    last two components after `.../`; results files carry no machine's
    absolute paths."""
    path = os.path.abspath(str(path))
    relative = os.path.relpath(path, os.getcwd())
    if not relative.startswith(os.pardir + os.sep + os.pardir):
        return relative
    return "/".join(["...", *Path(path).parts[-2:]])


def _portable_arg(arg):
    return portable_path(arg) if os.path.isabs(arg) else arg


def run_record(argv=None, with_keras=True, note=None, module=None):
    """Everything that identifies a run: command, machine, versions, time.

    Args:
        argv: the arguments (default `sys.argv[1:]`).
        with_keras: bool. Also record the Keras backend and its devices
            (imports Keras).
        note: str or None, free text (`--backend-note`).
        module: str, the entry point (`"benchmarks.scalability"`) for the
            recorded command; default: the script `sys.argv[0]`.
    """
    argv = [_portable_arg(a) for a in (sys.argv[1:] if argv is None else list(argv))]
    entry = ["-m", module] if module else [portable_path(sys.argv[0])]
    record = {
        "command": " ".join(shlex.quote(a) for a in ["python", *entry, *argv]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "git_tree_modified": _git_tree_modified(),
        "machine": machine_info(),
        "versions": package_versions(),
        "environment": {
            key: os.environ.get(key)
            for key in ("KERAS_BACKEND", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                        "XLA_FLAGS", "CUDA_VISIBLE_DEVICES", "TF_ENABLE_ONEDNN_OPTS")
        },
    }
    if with_keras:
        record["keras"] = keras_backend_info()
    if note:
        record["note"] = note
    return record


# === Command line ===


def script_parser(module, doc):
    """The `argparse` parser of the script `python -m <module>`: its
    description is the first line of the module docstring `doc`, its epilog
    the docstring's `Usage:` section, kept as written (none without one)."""
    import argparse

    _, usage, examples = doc.partition("Usage:")
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples if usage else None,
    )


def log(message):
    """Prints a progress line on stderr (stdout is for the tables), flushed."""
    print(message, file=sys.stderr, flush=True)


# === Files ===


def _jsonable(value):
    """NumPy scalars/arrays and non-finite floats made JSON-safe (NaN/inf -> str)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": strict JSON has no such numbers
    return value


def write_json_atomic(path, data):
    """Writes `data` as JSON to `path` atomically (`keras_congeal.io.atomic_file`)."""
    from keras_congeal.io import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(_jsonable(data), f, indent=1, sort_keys=False)
        f.write("\n")


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_npz_atomic(path, arrays):
    """Writes `arrays` to a compressed `.npz` at `path` atomically."""
    from keras_congeal.io import atomic_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def read_results_file(path):
    """A results file (a dict with a `results` dict, as `ResultStore` writes);
    `ValueError` (one line) when it is missing or not one."""
    if not Path(path).exists():
        raise ValueError(f"{path} does not exist")
    try:
        data = read_json(path)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a JSON file ({error})") from None
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path} is not a results file (no 'results' object)")
    return data


def config_as_read(config, read_config=None):
    """A recorded results file's `config` as it is compared with another:
    through `read_config` (see `ResultStore`) when given, JSON-safe."""
    if read_config is None or config is None:
        return config
    return _jsonable(read_config(config))


class ResultStore:
    """A results JSON written after every finished entry, resumable.

    The file holds `{"schema": ..., "config": ..., "runs": [...],
    "results": {key: entry}}`. With `resume=True` an existing file with the
    same `config` is continued: `done(key)` tells which entries to skip; a
    different config raises `ValueError` (start a new file instead).
    Without `resume`, an existing file is replaced.

    Args:
        path: the JSON file.
        schema: str, the name and version of the file's layout.
        config: dict, the settings that must match to resume.
        run: dict, this invocation's `run_record`.
        resume: bool.
        read_config: function or None. Reads the config of the file to
            resume before it is compared with `config` (e.g. fills in
            settings added since the file was written); the file keeps its
            config as written. Defaults to `None`: compared as written.
    """

    def __init__(self, path, schema, config, run, resume=False, read_config=None):
        self.path = Path(path)
        self.data = {"schema": schema, "config": _jsonable(config), "runs": [], "results": {}}
        if resume and self.path.exists():
            try:
                old = read_results_file(self.path)
            except ValueError as error:
                raise ValueError(f"cannot resume: {error}") from None
            recorded = config_as_read(old.get("config"), read_config)
            if old.get("schema") != schema or recorded != self.data["config"]:
                raise ValueError(
                    f"cannot resume {self.path}: it was written with schema "
                    f"{old.get('schema')!r} and config {old.get('config')!r}, this run has "
                    f"{schema!r} and {self.data['config']!r}; use another --output-dir or "
                    f"drop --resume"
                )
            self.data = old
        self.data["runs"].append(_jsonable(run))
        self.save()

    def done(self, key):
        return key in self.data["results"]

    def get(self, key):
        return self.data["results"].get(key)

    def put(self, key, entry):
        self.data["results"][key] = _jsonable(entry)
        self.save()

    def set(self, name, value):
        self.data[name] = _jsonable(value)
        self.save()

    def save(self):
        write_json_atomic(self.path, self.data)

    @property
    def results(self):
        return self.data["results"]


# === Tables ===


def fmt(value, digits=2):
    """A number for a table: `-` for None, strings as they are."""
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}f}"


def markdown_table(headers, rows):
    """A GitHub markdown table (list of str rows) from headers and cell rows."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# === Data and measures ===


def resolve_mnist(path=None):
    """`mnist.npz`: `path`, else `$KERAS_CONGEAL_DATA`, else the shared data folder."""
    from keras_congeal.data.mnist import resolve_mnist_path

    if path is None and not os.environ.get("KERAS_CONGEAL_DATA"):
        for candidate in (REPO.parent / "shared" / "data", REPO / ".devdata"):
            if (candidate / "mnist.npz").is_file():
                return str(candidate / "mnist.npz")
    return resolve_mnist_path(path)


def alignment_measures(inputs, aligned, transforms, mask=None):
    """Measures of one method's output on images in [0, 1].

    Args:
        inputs, aligned: arrays (N, H, W[, 1]), white = 1.
        transforms: (N, 3, 3) pixel `src_from_dst` matrices, or None.
        mask: (N,) bool of the images the method aligned (RASL's kept
            images) or None for all. APSNR, ink and scale are over the
            masked images; `apsnr_all` over all N.

    Returns:
        dict: `apsnr`, `apsnr_all`, `ink_kept`, `content_scale_median`
        (and 5th/95th percentiles), `images`, `images_kept`, plus the
        mean and variance images (float32 (H, W)) under `_mean`/`_var`.
    """
    from keras_congeal.metrics import ImageStats, content_scale, ink_kept

    inputs = np.asarray(inputs, "float64").reshape(len(inputs), *np.shape(inputs)[1:3])
    aligned = np.asarray(aligned, "float64").reshape(inputs.shape)
    mask = np.ones(len(inputs), bool) if mask is None else np.asarray(mask, bool)
    stats = ImageStats(1.0).update(aligned[mask]) if mask.any() else None
    out = {
        "images": int(len(inputs)),
        "images_kept": int(mask.sum()),
        "apsnr": stats.apsnr() if stats else float("nan"),
        "apsnr_all": ImageStats(1.0).update(aligned).apsnr(),
        "ink_kept": ink_kept(inputs[mask], aligned[mask]) if mask.any() else float("nan"),
        "content_scale_median": None,
        "content_scale_p05": None,
        "content_scale_p95": None,
    }
    if transforms is not None and mask.any():
        scales = content_scale(np.asarray(transforms)[mask], inputs.shape[1:3])
        out["content_scale_median"] = float(np.median(scales))
        out["content_scale_p05"] = float(np.percentile(scales, 5))
        out["content_scale_p95"] = float(np.percentile(scales, 95))
    out["_mean"] = (stats.mean if stats else np.zeros(inputs.shape[1:])).astype("float32")
    out["_var"] = (stats.variance if stats else np.zeros(inputs.shape[1:])).astype("float32")
    return out


def rss_bytes():
    """This process's resident-memory high-water mark (`ru_maxrss`), bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def peak_rss_from_proc():
    """This process's `VmHWM` (peak resident memory since its exec), bytes or None.

    Unlike `ru_maxrss`, which Linux carries over from the parent's size at
    fork across `execve`, `VmHWM` belongs to the process image alone.
    """
    return _proc_status_bytes("VmHWM")


def current_rss_bytes():
    """This process's current resident memory (Linux `/proc`), bytes or None."""
    return _proc_status_bytes("VmRSS")


def proc_status_bytes(fields):
    """The lines `fields` (e.g. `("VmRSS", "RssAnon")`, in kB) of
    `/proc/self/status`, as `{field: bytes}`; `{}` where there is no such file."""
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    return {
        key: int(rest.split()[0]) * 1024
        for key, _, rest in (line.partition(":") for line in lines)
        if key in fields
    }


def _proc_status_bytes(field):
    """The `field` line of `/proc/self/status` in bytes; None where there is none."""
    return proc_status_bytes((field,)).get(field)
