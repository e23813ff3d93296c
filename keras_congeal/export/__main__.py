"""`python -m keras_congeal.export`: the `export` command of `keras-congeal`
under its own program name (see `keras_congeal.cli.export`)."""

from keras_congeal.export import main

if __name__ == "__main__":
    raise SystemExit(main())
