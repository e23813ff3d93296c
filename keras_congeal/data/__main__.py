"""`python -m keras_congeal.data`: the `data` command of `keras-congeal` under
its own program name (see `keras_congeal.cli.data` for the data sets it writes)."""

from keras_congeal.cli.data import COMMAND

if __name__ == "__main__":
    raise SystemExit(COMMAND.main())
