"""Atomic file output: write beside the target, then `os.replace`."""

import contextlib
import os
import secrets

__all__ = ["atomic_output"]


@contextlib.contextmanager
def atomic_output(path):
    """Yields a fresh temporary path in `path`'s directory.

    When the block finishes without an exception the temporary file replaces
    `path` in one `os.replace`; otherwise it is deleted, and `path` is left as
    it was. The file is created with the usual permissions (umask applies).
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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)
