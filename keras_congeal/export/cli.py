"""Deprecated: the export command line moved to `keras_congeal.cli.export`.

Kept so that `python -m keras_congeal.export.cli` and
`from keras_congeal.export.cli import main` keep working; both warn.
"""

import warnings

from keras_congeal.export import main as _main

__all__ = ["main"]

_MOVED = (
    "keras_congeal.export.cli is deprecated: run `keras-congeal export` or "
    "`python -m keras_congeal.export`, or call keras_congeal.export.main"
)


def main(argv=None) -> int:
    """`keras_congeal.export.main`, with a `DeprecationWarning`."""
    warnings.warn(_MOVED, DeprecationWarning, stacklevel=2)
    return _main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
