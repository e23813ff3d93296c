"""The batch command: align a whole data set into an output directory.

The output directory gets `aligned.npy` (streamed into a memory map; same
dtype as the input for uint8, float32 for float input), `transforms.npy`
(float64 `(N, 3, 3)`), `report.json` and, for folder input, `filenames.json`.
For a folder of images of different sizes (models exported with
`--any-size` only), `aligned.npy` is replaced by `aligned/`, one PNG per input
named after it.

Everything is written into a temporary sibling directory that is renamed into
place only once complete; an existing result is replaced (with `overwrite`)
only after the new one is complete, and is never deleted before that.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import time
import uuid

import numpy as np

from keras_congeal_serving import __version__
from keras_congeal_serving.aligner import DEFAULT_BATCH_SIZE, Aligner
from keras_congeal_serving.errors import InputError
from keras_congeal_serving.images import DEFAULT_MAX_IMAGE_PIXELS, encode_png
from keras_congeal_serving.progress import Progress
from keras_congeal_serving.sources import (
    DEFAULT_MAX_SET_PIXELS,
    FolderSource,
    iter_chunks,
    open_source,
)

__all__ = ["run_align", "write_json_atomic"]


def _check_output(output: str, input_path: str, overwrite: bool) -> None:
    if os.path.lexists(output):
        if not os.path.isdir(output) or os.path.islink(output):
            raise InputError(f"{output}: exists and is not a directory")
        if not overwrite:
            raise InputError(f"{output}: already exists; pass --overwrite to replace it")
    out = os.path.realpath(output)
    inp = os.path.realpath(input_path)
    if inp == out or inp.startswith(out + os.sep):
        raise InputError(f"{output}: refusing to write over the input {input_path}")


def _make_parents(directory: str) -> list[str]:
    """Creates missing parent directories; returns them, deepest first."""
    created = []
    directory = os.path.abspath(directory)
    while not os.path.isdir(directory):
        created.append(directory)
        directory = os.path.dirname(directory)
    for path in reversed(created):
        os.mkdir(path)
    return created


def _make_partial_dir(output: str) -> str:
    """Creates the empty sibling `.OUTPUT.partial-XXXXXXXX` with the umask's permissions.

    (`tempfile.mkdtemp` would create it 0700, and the renamed result would keep that.)
    """
    parent = os.path.dirname(os.path.abspath(output))
    while True:
        tmp = os.path.join(
            parent, f".{os.path.basename(os.path.abspath(output))}.partial-{uuid.uuid4().hex[:8]}"
        )
        try:
            os.mkdir(tmp)  # mode 0o777, less the umask
            return tmp
        except FileExistsError:
            continue


def _commit(tmp: str, output: str) -> None:
    """Moves the finished `tmp` directory to `output`, replacing an old result."""
    if not os.path.lexists(output):
        os.rename(tmp, output)
        return
    backup = os.path.join(
        os.path.dirname(os.path.abspath(output)),
        f".{os.path.basename(output)}.old-{uuid.uuid4().hex[:8]}",
    )
    os.rename(output, backup)
    try:
        os.rename(tmp, output)
    except BaseException:
        os.rename(backup, output)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def write_json_atomic(path: str, value) -> None:
    """Writes `value` as JSON beside `path`, then moves it into place in one `os.replace`.

    The file gets the umask's permissions (`tempfile.mkstemp` would make it 0600).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "x") as f:  # mode 0o666, less the umask
            json.dump(value, f, indent=2)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _png_names(filenames: list[str]) -> list[str]:
    stems = [os.path.splitext(name)[0] + ".png" for name in filenames]
    if len(set(stems)) == len(stems):
        return stems
    return [name + ".png" for name in filenames]


def _check_source(aligner: Aligner, source) -> None:
    if source.uniform:
        aligner.check_shape(source.shape, name=source.describe())
        return
    # A folder of differently sized images: fine only for any-size models, where
    # each image is checked on its own; otherwise the first odd one is named.
    for name, shape in zip(source.filenames, source.shapes, strict=True):
        aligner.check_shape((1, *shape), name=os.path.join(source.path, name))
    if not aligner.metadata.any_size:
        raise InputError(f"{source.path}: images of different sizes")


def _write_uniform(aligner, source, tmp, batch_size, progress) -> tuple[list[int], str]:
    out_dtype = np.uint8 if source.dtype == np.uint8 else np.float32
    aligned = np.lib.format.open_memmap(
        os.path.join(tmp, "aligned.npy"), mode="w+", dtype=out_dtype, shape=source.shape
    )
    transforms = np.lib.format.open_memmap(
        os.path.join(tmp, "transforms.npy"),
        mode="w+",
        dtype=np.float64,
        shape=(source.shape[0], 3, 3),
    )
    for start, stop in iter_chunks(source.shape[0], batch_size):
        chunk = source.read(start, stop)
        out, transforms[start:stop] = aligner.run(aligner.prepare(chunk, first_index=start))
        aligned[start:stop] = aligner.restore(out, out_dtype).reshape(chunk.shape)
        progress.update(stop - start)
    aligned.flush()
    transforms.flush()
    del aligned, transforms
    return list(source.shape), np.dtype(out_dtype).name


def _write_mixed(aligner, source: FolderSource, tmp, batch_size, progress) -> None:
    folder = os.path.join(tmp, "aligned")
    os.mkdir(folder)
    names = _png_names(source.filenames)
    count = len(source.filenames)
    transforms = np.lib.format.open_memmap(
        os.path.join(tmp, "transforms.npy"), mode="w+", dtype=np.float64, shape=(count, 3, 3)
    )
    for start, stop in iter_chunks(count, batch_size):
        images = source.read_list(start, stop)
        index = 0
        while index < len(images):  # one session call per run of equal sizes
            end = index + 1
            while end < len(images) and images[end].shape == images[index].shape:
                end += 1
            group = np.stack(images[index:end])
            out, t = aligner.run(aligner.prepare(group, first_index=start + index))
            transforms[start + index : start + end] = t
            for offset, image in enumerate(aligner.restore(out, np.uint8)):
                with open(os.path.join(folder, names[start + index + offset]), "wb") as f:
                    f.write(encode_png(image))
            index = end
        progress.update(stop - start)
    transforms.flush()
    del transforms


def run_align(
    model_path: str | os.PathLike,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    key: str | None = None,
    overwrite: bool = False,
    providers=None,
    strict: bool = False,
    intra_op_threads: int | None = None,
    progress: bool = True,
    aligner: Aligner | None = None,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_set_pixels: int | None = DEFAULT_MAX_SET_PIXELS,
) -> dict:
    """Aligns `input_path` with the model into the directory `output`.

    Args:
        model_path: the exported `.onnx` model.
        input_path: `.npy`, `.npz` or HDF5 file, or a directory of PNG/JPEG.
        output: directory to create (atomically).
        batch_size: int. Images per onnxruntime call (and per read).
        key: optional str. Array/dataset name for `.npz`/HDF5.
        overwrite: bool. Replace an existing `output` once the new one is complete.
        providers, strict, intra_op_threads: see `Aligner`.
        progress: bool. Show progress on stderr.
        aligner: optional existing `Aligner` (then `model_path` is only reported).
        max_image_pixels, max_set_pixels: optional ints. For a folder: most
            pixels decoded per image and in all, told from the headers before
            anything is decoded (`TooLargeError` beyond them).

    Returns:
        The report, also written as `report.json`. Raises `InputError` (bad
        input, nothing written), `ModelError` or `ProviderError`.
    """
    if batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {batch_size}")
    output = os.fspath(output)
    input_path = os.fspath(input_path)
    _check_output(output, input_path, overwrite)
    if aligner is None:
        aligner = Aligner(model_path, providers, strict=strict, intra_op_threads=intra_op_threads)
    source = open_source(
        input_path,
        key=key,
        channels=aligner.metadata.channels,
        max_image_pixels=max_image_pixels,
        max_set_pixels=max_set_pixels,
    )
    try:
        _check_source(aligner, source)
        count = len(source.filenames) if source.kind == "folder" else source.shape[0]
        parent = os.path.dirname(os.path.abspath(output))
        created = _make_parents(parent)
        tmp = None
        try:
            tmp = _make_partial_dir(output)
            bar = Progress(count, enabled=progress)
            start = time.perf_counter()
            try:
                if source.uniform:
                    shape, dtype = _write_uniform(aligner, source, tmp, batch_size, bar)
                    aligned_name = "aligned.npy"
                else:
                    _write_mixed(aligner, source, tmp, batch_size, bar)
                    shape, dtype, aligned_name = None, "uint8", "aligned/"
            except InputError as error:
                message = str(error)
                if not message.startswith(source.describe()):
                    message = f"{source.describe()}: {message}"
                raise type(error)(message) from None
            finally:
                bar.close()
            seconds = time.perf_counter() - start
            if source.filenames is not None:
                with open(os.path.join(tmp, "filenames.json"), "w") as f:
                    json.dump(source.filenames, f, indent=1)
            report = {
                "count": count,
                "shape": shape,
                "dtype": dtype,
                "aligned": aligned_name,
                "seconds": round(seconds, 6),
                "images_per_second": round(count / seconds, 3) if seconds > 0 else None,
                "batch_size": batch_size,
                "input": {
                    "path": os.path.abspath(input_path),
                    "kind": source.kind,
                    "key": source.key,
                    "dtype": source.dtype.name,
                },
                "providers": aligner.providers,
                "requested_providers": aligner.requested_providers,
                "model": {
                    "path": os.path.abspath(aligner.model_path),
                    "sha256": aligner.model_sha256,
                    "metadata": aligner.metadata.to_dict(),
                },
                "serving_version": __version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            }
            with open(os.path.join(tmp, "report.json"), "w") as f:
                json.dump(report, f, indent=2)
            _commit(tmp, output)
        except BaseException:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            for path in created:
                try:
                    os.rmdir(path)
                except OSError:
                    break
            raise
    finally:
        source.close()
    return report
