"""Loading a saved `Congealer`: the one place `keras.saving.load_model` is called."""

import os
import zipfile

import keras

from keras_congeal.io import InputError, check_model_file
from keras_congeal.models.congealer import Congealer

__all__ = ["load_congealer", "save_without_optimizer"]


def load_congealer(path):
    """Loads a `.keras` file holding a `Congealer`, in Keras's safe mode.

    A `.keras` file may come from anyone: `safe_mode=True` refuses the
    Python code (lambdas) a config could carry, and the Keras floor of
    `pyproject.toml` (3.11.3) excludes the versions whose safe mode could be
    bypassed (CVE-2025-8747, CVE-2025-9906, CVE-2025-9905). The optimizer is
    not restored (`compile=False`): aligning and exporting need none.

    Args:
        path: str or path-like. A `model.keras` written by `congeal`.

    Returns:
        The `Congealer`.

    Raises:
        InputError: a missing or unreadable file, or one that does not hold
        a `Congealer`; the message is one line.
    """
    path = os.fspath(path)
    check_model_file(path)
    if path.endswith(".keras") and not zipfile.is_zipfile(path):
        # Keras reports such a file as "File not found".
        raise InputError(f"{path}: not a .keras model (expected the zip archive Keras writes)")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"{path}: cannot load it as a Keras model ({reason})") from None
    if not isinstance(model, Congealer):
        raise InputError(f"{path}: holds a {type(model).__name__}, not a keras_congeal Congealer")
    return model


def save_without_optimizer(model, path):
    """Saves a trained `Congealer` as `.keras` without its optimizer's state.

    Adam keeps two moments per weight: a trained model saved whole is about
    three times its weights. The resumable checkpoint keeps that state; the
    shipped model needs only the weights (it aligns, it is not trained on).

    Args:
        model: a built `Congealer`.
        path: str or path-like. The `.keras` file to write.
    """
    inference = type(model).from_config(model.get_config())
    inference.build((None, *model.image_shape))
    inference.set_weights(model.get_weights())
    inference.save(path)
