"""Writing outputs atomically, and the one error type of bad inputs and outputs.

* `atomic_file`: a file that appears complete or not at all (a temporary file
  beside the target, `os.replace`d onto it when the block succeeds);
* `AtomicOutputDir`: a directory built in `DIR.partial/` and renamed to `DIR`
  when complete (resumable);
* `NpyWriter`/`write_npy_streaming`: a `.npy` filled chunk by chunk through
  `np.lib.format.open_memmap`;
* `InputError`: a bad input or output path, with a one-line message for the
  user (the command lines print it and exit 1).

Every writer of the package (the command lines, `keras_congeal.data`, the ONNX
export, the benchmark scripts) goes through these; the serving package, which
does not import keras_congeal, has its own.
"""

import contextlib
import os
import secrets
import shutil

import numpy as np

__all__ = [
    "InputError",
    "atomic_file",
    "write_bytes_atomic",
    "unlink_quietly",
    "AtomicOutputDir",
    "NpyWriter",
    "write_npy_streaming",
]


class InputError(ValueError):
    """A bad input or output path; the message is one line, meant for a user."""


def unlink_quietly(path):
    """Deletes `path` if it exists."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


@contextlib.contextmanager
def atomic_file(path):
    """Yields a fresh temporary path beside `path`; on success it replaces `path`.

    The temporary file (`.NAME.XXXXXXXX.tmp` in `path`'s directory) is
    created empty, so its name is taken; the block writes to it (or over it:
    `open(tmp, "w")`, `np.save`, `h5py.File(tmp, "w")`). When the block
    finishes without an exception it replaces `path` in one `os.replace`;
    otherwise it is deleted and `path` is left as it was. Permissions follow
    the umask, as every other output's.

    Example:

    >>> with atomic_file("report.json") as tmp, open(tmp, "w") as f:
    ...     json.dump(report, f)
    """
    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            open(tmp, "xb").close()
            break
        except FileExistsError:
            continue
    try:
        yield tmp
    except BaseException:
        unlink_quietly(tmp)
        raise
    os.replace(tmp, path)


def write_bytes_atomic(path, data):
    """Writes `data` (bytes or str) to `path` through `atomic_file`."""
    with atomic_file(path) as tmp, open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return path


class NpyWriter:
    """A `.npy` file filled in order, chunk by chunk, through a memory map.

    Args:
        path: str. The file to create.
        shape: tuple. The whole array's shape.
        dtype: the array's dtype.

    Example:

    >>> with NpyWriter("aligned.npy", (n, 28, 28), np.uint8) as out:
    ...     for chunk in chunks:
    ...         out.write(chunk)
    """

    def __init__(self, path, shape, dtype):
        self.path = os.fspath(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.written = 0
        self._array = np.lib.format.open_memmap(
            self.path, mode="w+", dtype=self.dtype, shape=self.shape
        )

    def write(self, chunk):
        chunk = np.asarray(chunk)
        stop = self.written + len(chunk)
        if stop > self.shape[0]:
            raise ValueError(f"{self.path}: {stop} rows written, the array holds {self.shape[0]}")
        self._array[self.written:stop] = chunk.reshape((len(chunk), *self.shape[1:]))
        self.written = stop

    def close(self):
        if self._array is not None:
            self._array.flush()
            self._array = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc_info):
        self.close()
        if exc_type is None and self.written != self.shape[0]:
            raise ValueError(
                f"{self.path}: {self.written} of {self.shape[0]} rows were written"
            )


def write_npy_streaming(path, chunks, shape, dtype):
    """Writes the arrays of the iterable `chunks`, in order, into one `.npy`.

    Memory stays at one chunk; the file is written atomically (a temporary
    file beside `path`, renamed at the end).

    Returns:
        `path`.
    """
    with atomic_file(path) as tmp:
        with NpyWriter(tmp, shape, dtype) as out:
            for chunk in chunks:
                out.write(chunk)
    return path


class AtomicOutputDir:
    """An output directory that appears complete, or not at all.

    The result is built in the sibling `DIR.partial/` and renamed to `DIR`
    by `commit()`. An existing `DIR` is kept until the new result is
    complete (and only replaced with `overwrite`, unless it is empty). A `DIR.partial/` left by
    an interrupted run is an error unless `resume`, when it is reused.

    Args:
        path: str. The final directory `DIR`.
        overwrite: bool. Replace an existing `DIR` when committing.
        resume: bool. Continue in an existing `DIR.partial/`.
        protect: list of str. Input paths that `DIR` must neither be nor
            contain (an `overwrite` would delete them).
        resumable: bool. Whether the command can resume (only changes the
            message about an existing `DIR.partial/`).
    """

    PARTIAL_SUFFIX = ".partial"

    def __init__(self, path, overwrite=False, resume=False, protect=(), resumable=True):
        self.path = os.path.abspath(os.fspath(path))
        self.partial = self.path + self.PARTIAL_SUFFIX
        self.overwrite = overwrite
        self.resume = resume
        self.protect = [os.fspath(p) for p in protect]
        self.resumable = resumable
        self.resuming = False

    def check(self):
        """Raises `InputError` if the output cannot be written; writes nothing.

        Sets `resuming` when an interrupted run will be continued.
        """
        if os.path.lexists(self.path):
            if not os.path.isdir(self.path) or os.path.islink(self.path):
                raise InputError(f"{self.path}: exists and is not a directory")
            if not self.overwrite and os.listdir(self.path):
                raise InputError(
                    f"{self.path}: already exists; pass --overwrite to replace it (the old "
                    "result is removed only once the new one is complete)"
                )
        for protected in self.protect:
            inside = os.path.realpath(protected)
            for out in (os.path.realpath(self.path), os.path.realpath(self.partial)):
                if inside == out or inside.startswith(out + os.sep):
                    raise InputError(f"{self.path}: refusing to write over the input "
                                     f"{protected}")
        if os.path.lexists(self.partial):
            if not os.path.isdir(self.partial) or os.path.islink(self.partial):
                raise InputError(f"{self.partial}: exists and is not a directory; remove it")
            if not self.resumable:
                raise InputError(
                    f"{self.partial}: an unfinished run is there (running, or killed); "
                    "remove it"
                )
            if not self.resume:
                raise InputError(
                    f"{self.partial}: an unfinished run is there; pass --resume to "
                    "continue it, or remove it"
                )
            self.resuming = True
        parent = os.path.dirname(self.path)
        existing = parent
        while not os.path.isdir(existing):
            if os.path.lexists(existing):
                raise InputError(f"{existing}: exists and is not a directory")
            existing = os.path.dirname(existing)
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"{existing}: cannot write there (permission denied)")
        return self

    def begin(self):
        """Creates `DIR.partial/` (and missing parents) unless resuming it."""
        if not self.resuming:
            os.makedirs(os.path.dirname(self.partial), exist_ok=True)
            try:
                os.mkdir(self.partial)
            except FileExistsError:
                raise InputError(
                    f"{self.partial}: created meanwhile by another run; remove it or pass "
                    "--resume"
                ) from None
        return self.partial

    def file(self, name):
        """The path of `name` inside the partial directory."""
        return os.path.join(self.partial, name)

    def commit(self, drop=()):
        """Deletes the scratch entries `drop`, then renames `DIR.partial` to `DIR`."""
        for name in drop:
            entry = self.file(name)
            if os.path.isdir(entry) and not os.path.islink(entry):
                shutil.rmtree(entry)
            else:
                unlink_quietly(entry)
        if not os.path.lexists(self.path):
            os.rename(self.partial, self.path)
            return self.path
        if not self.overwrite and os.listdir(self.path):  # filled while we worked
            raise InputError(f"{self.path}: appeared during the run; the result is kept in "
                             f"{self.partial}")
        old = os.path.join(os.path.dirname(self.path),
                           f".{os.path.basename(self.path)}.old-{secrets.token_hex(4)}")
        os.rename(self.path, old)
        try:
            os.rename(self.partial, self.path)
        except BaseException:
            os.rename(old, self.path)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return self.path

    def discard(self):
        """Deletes `DIR.partial/` (a failed run that cannot be resumed)."""
        shutil.rmtree(self.partial, ignore_errors=True)
