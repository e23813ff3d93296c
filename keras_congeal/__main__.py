"""`python -m keras_congeal`: the command line (see `keras_congeal.cli`).

    python -m keras_congeal congeal --output demo/
    python -m keras_congeal congeal digits.npy --output runs/digits --epochs 30
    python -m keras_congeal align runs/digits/model.keras new.npy --output runs/new
"""

from keras_congeal.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
