"""Cluster batch alignment with Ray Data: `python -m keras_congeal_serving ray-align`.

The input (a folder, a file or a glob) is cut into *shards* on the driver:
image files are grouped, in name order, `shard_size` at a time; each `.npy` or
HDF5 array is cut into row ranges of `shard_size` (an `.npz` member, a zip
stream that cannot seek, is one shard). Ray Data streams the shards through
`map_batches` with `ShardAligner`, a callable class whose onnxruntime session
is created once per worker; each worker reads its shard `batch_size` images at
a time with the readers of the `align` command and writes it atomically:

    OUTPUT/job.json                      model SHA-256, input, shard size, plan digest
    OUTPUT/shards/000000/aligned.npy     uint8 in -> uint8 out, float in -> float32
    OUTPUT/shards/000000/transforms.npy  float64 (n, 3, 3) pixel src_from_dst
    OUTPUT/shards/000000/shard.json      the source of every row (file, key, rows)
    OUTPUT/shards/000000/filenames.json  image shards: the file of every row
    OUTPUT/manifest.json                 every shard's status, the bad files, counts

A shard directory appears only complete (written beside it, then renamed), so
a rerun with the same model, input and shard size skips the shards that exist
and redoes the rest. A file that cannot be read or does not fit the model is
listed in the manifest with its reason; the other files are aligned. Image
files honour the pixel budgets of `align`, told from their headers before
anything is decoded: a file over `max_image_pixels` is such a bad file, and a
shard whose images together exceed `max_set_pixels` fails (its files listed
with the reason). Shard directories and JSON files get the umask's permissions.

Needs the `ray` extra: `pip install 'keras-congeal-serving[cpu,ray]'`.
"""

from __future__ import annotations

import datetime
import glob
import hashlib
import json
import logging
import os
import re
import shutil
import time

import numpy as np

from keras_congeal_serving import __version__
from keras_congeal_serving.aligner import DEFAULT_BATCH_SIZE, Aligner, resolve_providers
from keras_congeal_serving.batch import (
    _check_output,
    _commit,
    _make_partial_dir,
    _write_uniform,
    write_json_atomic,
)
from keras_congeal_serving.errors import (
    InputError,
    TooLargeError,
    UnreadableInputError,
    WorkerError,
)
from keras_congeal_serving.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_SUFFIXES,
    decode_image,
    read_header,
)
from keras_congeal_serving.progress import Progress
from keras_congeal_serving.sources import (
    DEFAULT_MAX_SET_PIXELS,
    FolderSource,
    iter_chunks,
    list_folder,
    open_source,
)

__all__ = ["DEFAULT_SHARD_SIZE", "ShardAligner", "plan_shards", "ray_align"]

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 1024
JOB_FILE = "job.json"
MANIFEST_FILE = "manifest.json"
SHARDS_DIR = "shards"
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider")


def _import_ray():
    try:
        import ray
        import ray.data
    except ImportError as error:
        raise ImportError(
            "ray-align needs Ray Data: pip install 'keras-congeal-serving[cpu,ray]'"
        ) from error
    return ray


# === Planning (driver) ===


def _list_input(input_path: str) -> tuple[str, list[str]]:
    """The input's files as `(root, names relative to root)`, sorted."""
    if os.path.isdir(input_path):
        names = list_folder(input_path)
        if not names:
            raise InputError(f"{input_path}: no files in this directory")
        return input_path, names
    if os.path.isfile(input_path):
        return os.path.dirname(input_path), [os.path.basename(input_path)]
    matches = sorted(m for m in glob.glob(input_path, recursive=True) if os.path.isfile(m))
    if not matches:
        raise UnreadableInputError(
            f"{input_path}: no such file or directory, and no file matches this pattern"
        )
    root = os.path.commonpath([os.path.dirname(os.path.abspath(m)) for m in matches])
    return root, [os.path.relpath(os.path.abspath(m), root) for m in matches]


def plan_shards(
    input_path: str, aligner: Aligner, shard_size: int, key: str | None = None
) -> tuple[list[dict], list[dict]]:
    """Cuts the input into shards; returns `(shards, bad_files)`.

    Array files are opened (headers only) and checked against the model here;
    one that cannot be read or does not fit goes to `bad_files` as
    `{"file": ..., "reason": ...}`. Image files are checked by the workers.
    Every shard is a JSON-serialisable dict with its name under `"shard"`.
    """
    root, names = _list_input(input_path)
    root = os.path.abspath(root)
    images = [name for name in names if name.lower().endswith(IMAGE_SUFFIXES)]
    units, bad = [], []
    for start, stop in iter_chunks(len(images), shard_size):
        units.append({"kind": "images", "root": root, "names": images[start:stop]})
    for name in names:
        if name.lower().endswith(IMAGE_SUFFIXES):
            continue
        path = os.path.join(root, name)
        try:
            source = open_source(path, key=key, channels=aligner.metadata.channels)
        except (InputError, OSError) as error:
            bad.append(_bad_file(path, error))
            continue
        try:
            aligner.check_shape(source.shape, name=source.describe())
            size = source.shape[0] if source.sequential else shard_size
            for first, last in iter_chunks(source.shape[0], size):
                units.append(
                    {"kind": "array", "file": path, "key": source.key, "rows": [first, last]}
                )
        except InputError as error:
            bad.append(_bad_file(path, error))
        finally:
            source.close()
    width = max(6, len(str(len(units) - 1)))
    for index, unit in enumerate(units):
        unit["shard"] = f"{index:0{width}d}"
    return units, bad


def _bad_file(path: str, error: Exception) -> dict:
    """A `bad_files` entry; the reason without the file name the message starts with."""
    reason = str(error)
    if reason.startswith(path + ": "):
        reason = reason[len(path) + 2 :]
    return {"file": path, "reason": reason}


def _first_image_size(units: list[dict], max_pixels: int | None) -> tuple[int, int] | None:
    """`(height, width)` of the first image file whose header reads and fits
    `max_pixels`, or None."""
    for unit in units:
        for name in unit.get("names", ()):
            path = os.path.join(unit["root"], name)
            try:
                return read_header(path, path, None, max_pixels)[:2]
            except InputError:
                continue  # reported by its worker
    return None


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


# === Workers ===


class ShardAligner:
    """Ray Data callable class: aligns whole shards, one onnxruntime session per worker.

    `__call__` takes a batch `{"unit": array of JSON shard descriptions}` and
    returns `{"result": array of JSON results}` (status `done` or `failed`, row
    count, bad files, seconds). Failures of a shard are returned, not raised, so
    that one bad file does not stop the job.

    Args:
        model_path: str. The `.onnx` model, on a path every worker can read.
        output: str. The job's output directory (shared by every worker).
        providers, strict, intra_op_threads: see `Aligner`.
        batch_size: int. Images per onnxruntime call (and per read).
        image_size: optional `(height, width)`. Required size of image files
            (for `any_size` models: one size for the whole input).
        max_image_pixels, max_set_pixels: optional ints. Image files: most pixels
            per image (a larger file is a bad file) and per shard (a larger shard
            fails), told from the headers before anything is decoded.
    """

    def __init__(
        self,
        model_path: str,
        output: str,
        providers=None,
        strict: bool = False,
        intra_op_threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        image_size: tuple[int, int] | None = None,
        max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
        max_set_pixels: int | None = DEFAULT_MAX_SET_PIXELS,
    ):
        self.aligner = Aligner(
            model_path, providers, strict=strict, intra_op_threads=intra_op_threads
        )
        self.shards = os.path.join(output, SHARDS_DIR)
        self.batch_size = batch_size
        self.image_size = tuple(image_size) if image_size is not None else None
        self.max_image_pixels = max_image_pixels
        self.max_set_pixels = max_set_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [json.dumps(self.align_shard(json.loads(unit))) for unit in batch["unit"]]
        return {"result": np.array(results, dtype=object)}

    def align_shard(self, unit: dict) -> dict:
        """Aligns one shard into `shards/NAME/`; returns its result dict."""
        start = time.perf_counter()
        result = {"shard": unit["shard"], "status": "done", "count": 0, "bad_files": []}
        try:
            if unit["kind"] == "array":
                result["count"] = self._write_array(unit)
            else:
                result["count"], result["bad_files"], error = self._write_images(unit)
                if result["count"] == 0:
                    result.update(status="failed", error=error)
        except (InputError, OSError) as error:
            result.update(status="failed", error=str(error))
        result["seconds"] = round(time.perf_counter() - start, 6)
        result["providers"] = self.aligner.providers
        return result

    def _write(self, unit: dict, source, info: dict, filenames: list[str] | None) -> None:
        tmp = _make_partial_dir(os.path.join(self.shards, unit["shard"]))
        try:
            shape, dtype = _write_uniform(
                self.aligner, source, tmp, self.batch_size, Progress(0, enabled=False)
            )
            info = {**info, "shard": unit["shard"], "count": shape[0], "shape": shape}
            with open(os.path.join(tmp, "shard.json"), "w") as f:
                json.dump({**info, "dtype": dtype, "unit_sha256": _digest(unit)}, f, indent=1)
            if filenames is not None:
                with open(os.path.join(tmp, "filenames.json"), "w") as f:
                    json.dump(filenames, f, indent=1)
            _commit(tmp, os.path.join(self.shards, unit["shard"]))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write_array(self, unit: dict) -> int:
        first, last = unit["rows"]
        source = open_source(unit["file"], key=unit["key"])
        try:
            view = source.view(first, last)
            self.aligner.check_shape(view.shape, name=view.describe())
            info = {"source": {"file": unit["file"], "key": unit["key"], "rows": unit["rows"]}}
            try:
                self._write(unit, view, info, None)
            except InputError as error:  # e.g. "image 3 contains NaN": name the file
                raise type(error)(f"{view.describe()} rows {first}:{last}: {error}") from None
        finally:
            source.close()
        return last - first

    def _check_image(self, path: str) -> None:
        height, width, channels = read_header(
            path, path, self.aligner.metadata.channels, self.max_image_pixels
        )
        if self.image_size is not None and (height, width) != self.image_size:
            raise InputError(
                f"{path}: image is {height}x{width} (HxW); expected "
                f"{self.image_size[0]}x{self.image_size[1]}"
            )
        self.aligner.check_shape((1, height, width, channels), name=path)

    def _write_images(self, unit: dict) -> tuple[int, list[dict], str | None]:
        """Writes the shard's readable images.

        Returns `(count, bad files, error)`: with count 0 nothing was written and
        `error` says why.
        """
        root = unit["root"]
        good, bad = [], []
        for name in unit["names"]:
            path = os.path.join(root, name)
            try:
                self._check_image(path)
                good.append(name)
            except InputError as error:
                bad.append(_bad_file(path, error))
        while good:
            try:
                source = FolderSource(
                    root,
                    self.aligner.metadata.channels,
                    self.max_image_pixels,
                    self.max_set_pixels,
                    names=good,
                )
            except TooLargeError as error:  # all of them together: --max-set-pixels
                reason = f"{error} (shard {unit['shard']}; use a smaller --shard-size)"
                bad.extend({"file": os.path.join(root, name), "reason": reason} for name in good)
                return 0, bad, reason
            try:
                self._write(unit, source, {"source": {"root": root}, "bad_files": bad}, good)
                return len(good), bad, None
            except UnreadableInputError:
                # A header that read fine but data that does not decode: find
                # the culprits one by one, drop them, redo the shard.
                broken = []
                for name in good:
                    path = os.path.join(root, name)
                    try:
                        decode_image(path, path, self.aligner.metadata.channels)
                    except InputError as error:
                        broken.append(_bad_file(path, error))
                if not broken:
                    raise
                bad.extend(broken)
                names = {os.path.join(root, n) for n in good} - {b["file"] for b in broken}
                good = [n for n in good if os.path.join(root, n) in names]
        return 0, bad, "no readable image in this shard"


# === Driver ===


def _check_job(output: str, job: dict) -> None:
    """Refuses an `output` that holds anything but an earlier run of this very job."""
    if not (os.path.isdir(output) and os.listdir(output)):
        return
    try:
        with open(os.path.join(output, JOB_FILE)) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        raise InputError(
            f"{output}: exists and is not a ray-align output (no readable {JOB_FILE})"
        ) from None
    if any(previous.get(k) != job[k] for k in ("model_sha256", "plan_sha256")):
        raise InputError(
            f"{output}: holds a ray-align run of another model, input, --key or "
            "--shard-size; choose another --output"
        )


def _create_output(output: str, job: dict) -> None:
    """Creates `output/shards` and `job.json`; removes what a killed run left half-written."""
    shards = os.path.join(output, SHARDS_DIR)
    os.makedirs(shards, exist_ok=True)
    for entry in os.scandir(shards):
        if entry.name.startswith(".") and ".partial-" in entry.name:
            shutil.rmtree(entry.path, ignore_errors=True)
    if not os.path.exists(os.path.join(output, JOB_FILE)):
        write_json_atomic(os.path.join(output, JOB_FILE), job)


def _finished(shards: str, unit: dict) -> dict | None:
    """The `shard.json` of a shard already written for this very unit, else None."""
    try:
        with open(os.path.join(shards, unit["shard"], "shard.json")) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if info.get("unit_sha256") == _digest(unit) else None


def _run_ray(todo, *, address, num_workers, cpus, gpus, progress, constructor_kwargs, before):
    """Runs the shards `todo` on Ray (`before()` once the cluster has the resources)."""
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        # A local cluster without its dashboard; joining one takes no options.
        if address:
            ray.init(address)
        else:
            ray.init(include_dashboard=False)
    try:
        available = ray.cluster_resources()
        for name, amount in (("CPU", cpus), ("GPU", gpus)):
            if amount and available.get(name, 0) < amount:
                raise WorkerError(
                    f"each worker asks for {amount} {name} but the Ray cluster has "
                    f"{available.get(name, 0):g} (--providers, --{name.lower()}s-per-worker)"
                )
        before()
        context = ray.data.DataContext.get_current()
        progress_before, context.enable_progress_bars = context.enable_progress_bars, progress
        dataset = ray.data.from_items(
            [{"unit": json.dumps(unit)} for unit in todo],
            override_num_blocks=min(len(todo), 10_000),
        )
        results = dataset.map_batches(
            ShardAligner,
            fn_constructor_kwargs=constructor_kwargs,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=cpus,
            num_gpus=gpus,
        )
        start = time.perf_counter()
        try:
            rows = [json.loads(row["result"]) for row in results.iter_rows()]
        except ray.exceptions.RayActorError as error:
            if not error.actor_init_failed:
                raise
            # The message ends with the worker's own one-line error, e.g. a
            # ProviderError; the traceback above it went to the worker's log.
            cause = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()[-1]
            raise WorkerError(f"the Ray workers could not start: {cause}") from None
        finally:
            context.enable_progress_bars = progress_before
        return rows, ray.__version__, time.perf_counter() - start
    finally:
        if started:
            ray.shutdown()


def ray_align(
    model_path: str | os.PathLike,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    address: str | None = None,
    num_workers: int = 1,
    batch_size: int = DEFAULT_BATCH_SIZE,
    shard_size: int = DEFAULT_SHARD_SIZE,
    key: str | None = None,
    providers="cpu",
    strict: bool = False,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    intra_op_threads: int | None = None,
    progress: bool = True,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_set_pixels: int | None = DEFAULT_MAX_SET_PIXELS,
) -> dict:
    """Aligns a folder, file or glob of images/arrays on a Ray cluster into `output`.

    Args:
        model_path: the exported `.onnx` model (a path every Ray node can read).
        input_path: a directory (PNG/JPEG, `.npy`, `.npz` and HDF5 files, not
            recursive), one such file, or a glob (`data/**/*.npy`).
        output: directory for the shards, `job.json` and `manifest.json`;
            rerunning into it resumes.
        address: optional str. Ray cluster: None starts a local one (unless
            Ray is already initialised in this process), `"auto"` joins the
            cluster of this node, `"ray://head:10001"` a remote one.
        num_workers: int. Ray actors, each with its own onnxruntime session.
        batch_size: int. Images per onnxruntime call. Defaults to 64.
        shard_size: int. Images per output shard. Defaults to 1024.
        key: optional str. Array name in `.npz` / dataset in HDF5 files.
        providers: onnxruntime execution providers for the workers, explicit
            (see `Aligner`). Defaults to `"cpu"`.
        strict: bool. Fail when the first provider is not the one in use.
        cpus_per_worker: float. CPUs Ray reserves per worker. Defaults to 1.
        gpus_per_worker: optional float. GPUs per worker; defaults to 1 when the
            first provider is CUDA, TensorRT or ROCm, else 0.
        intra_op_threads: optional int. onnxruntime threads per worker;
            defaults to `cpus_per_worker` rounded up.
        progress: bool. Ray Data's progress bars.
        max_image_pixels: optional int. Most pixels of one image file, told from
            its header before decoding; a larger file is a bad file. None: no limit.
        max_set_pixels: optional int. Most pixels of the image files of one
            shard together; a larger shard fails (its files are bad files).

    Returns:
        The manifest, also written as `output/manifest.json`. Raises
        `InputError` (nothing to align, output of another job), `ModelError`.
    """
    for name, value in (
        ("--num-workers", num_workers),
        ("--batch-size", batch_size),
        ("--shard-size", shard_size),
        ("--max-image-pixels", max_image_pixels),
        ("--max-set-pixels", max_set_pixels),
    ):
        if value is not None and value < 1:
            raise InputError(f"{name} must be >= 1, got {value}")
    model_path = os.path.abspath(os.fspath(model_path))
    input_path = os.fspath(input_path)
    output = os.path.abspath(os.fspath(output))
    first = resolve_providers(providers, [])[0]
    first = first[0] if isinstance(first, tuple) else first
    if gpus_per_worker is None:
        gpus_per_worker = 1 if first in _GPU_PROVIDERS else 0
    if intra_op_threads is None:
        intra_op_threads = max(1, int(np.ceil(cpus_per_worker)))

    started = time.perf_counter()
    checker = Aligner(model_path, "cpu")  # metadata, SHA-256 and array headers, on the driver
    units, bad_files = plan_shards(input_path, checker, shard_size, key)
    if not units:
        reasons = "; ".join(b["reason"] for b in bad_files[:3])
        raise InputError(f"{input_path}: nothing to align ({reasons or 'no input files'})")
    image_size = None
    metadata = checker.metadata
    if not metadata.any_size:
        image_size = (metadata.image_height, metadata.image_width)
    else:  # any-size: the first readable image sets the size of every image file
        image_size = _first_image_size(units, max_image_pixels)
    _check_output(output, input_path, overwrite=True)
    job = {
        "model_sha256": checker.model_sha256,
        "plan_sha256": _digest(units),
        "input": os.path.abspath(input_path),
        "key": key,
        "shard_size": shard_size,
        "shards": len(units),
    }
    _check_job(output, job)
    created = not os.path.exists(output)
    shards = os.path.join(output, SHARDS_DIR)
    previous = {u["shard"]: _finished(shards, u) for u in units}
    todo = [u for u in units if previous[u["shard"]] is None]
    results, ray_version, ray_seconds = {}, None, 0.0
    if not todo:
        _create_output(output, job)
    else:
        try:
            rows, ray_version, ray_seconds = _run_ray(
                todo,
                address=address,
                num_workers=min(num_workers, len(todo)),
                cpus=cpus_per_worker,
                gpus=gpus_per_worker,
                progress=progress,
                constructor_kwargs={
                    "model_path": model_path,
                    "output": output,
                    "providers": providers,
                    "strict": strict,
                    "intra_op_threads": intra_op_threads,
                    "batch_size": batch_size,
                    "image_size": image_size,
                    "max_image_pixels": max_image_pixels,
                    "max_set_pixels": max_set_pixels,
                },
                before=lambda: _create_output(output, job),
            )
        except BaseException:
            # Leave nothing behind a run that created `output` and finished no shard.
            if created and not (os.path.isdir(shards) and os.listdir(shards)):
                shutil.rmtree(output, ignore_errors=True)
            raise
        results = {row["shard"]: row for row in rows}
    seconds = time.perf_counter() - started

    entries = []
    for unit in units:
        info = previous[unit["shard"]]
        if info is not None:
            entry = {"shard": unit["shard"], "status": "skipped", "count": info["count"]}
            bad_files.extend(info.get("bad_files", []))
        else:
            row = results[unit["shard"]]
            entry = {k: row[k] for k in ("shard", "status", "count", "seconds") if k in row}
            bad_files.extend(row["bad_files"])
            if row["status"] == "failed":
                entry["error"] = row["error"]
                if unit["kind"] == "array":
                    bad_files.append({"file": unit["file"], "reason": row["error"]})
        entry["path"] = f"{SHARDS_DIR}/{unit['shard']}" if entry["status"] != "failed" else None
        entries.append(entry)
    aligned_now = sum(e["count"] for e in entries if e["status"] == "done")
    manifest = {
        "count": sum(e["count"] for e in entries if e["status"] != "failed"),
        "aligned_this_run": aligned_now,
        "shards_total": len(entries),
        "shards_done": sum(e["status"] == "done" for e in entries),
        "shards_skipped": sum(e["status"] == "skipped" for e in entries),
        "shards_failed": sum(e["status"] == "failed" for e in entries),
        "complete": all(e["status"] != "failed" for e in entries),
        "bad_files": bad_files,
        "shards": entries,
        # Wall time of the whole call (planning, Ray start-up) and of the Ray
        # Data run alone (worker start-up, reading, aligning, writing).
        "seconds": round(seconds, 6),
        "ray_data_seconds": round(ray_seconds, 6),
        "images_per_second": round(aligned_now / ray_seconds, 3) if aligned_now else None,
        "batch_size": batch_size,
        "shard_size": shard_size,
        "max_image_pixels": max_image_pixels,
        "max_set_pixels": max_set_pixels,
        "input": {"path": os.path.abspath(input_path), "key": key},
        "ray": {
            "version": ray_version,
            "address": address,
            "num_workers": num_workers,
            "cpus_per_worker": cpus_per_worker,
            "gpus_per_worker": gpus_per_worker,
        },
        "providers": sorted({p for r in results.values() for p in r.get("providers", [])}),
        "requested_providers": [
            p[0] if isinstance(p, tuple) else p for p in resolve_providers(providers, [])
        ],
        "model": {
            "path": model_path,
            "sha256": checker.model_sha256,
            "metadata": metadata.to_dict(),
        },
        "serving_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }
    write_json_atomic(os.path.join(output, MANIFEST_FILE), manifest)
    return manifest
