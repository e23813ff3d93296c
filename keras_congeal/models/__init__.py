"""Keras models: the `Congealer` and the Table-1 presets."""

from keras_congeal.models.congealer import Congealer
from keras_congeal.presets import PRESETS, get_preset, preset_for_size

__all__ = ["Congealer", "PRESETS", "get_preset", "preset_for_size"]
