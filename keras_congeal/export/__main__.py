"""`python -m keras_congeal.export`: see `keras_congeal.export.cli`."""

from keras_congeal.export.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
