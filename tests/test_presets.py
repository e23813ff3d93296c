import dataclasses

import pytest

from keras_congeal.presets import PRESETS, preset_for_size, preset_settings
from keras_congeal.settings import CongealSettings


def test_for_preset_applies_the_preset_settings_then_the_changes():
    faces = CongealSettings.for_preset("lfw")
    assert faces.preset == "lfw"
    for name, value in preset_settings("lfw").items():
        assert getattr(faces, name) == value
    assert faces.distortion_features == "local-contrast" and faces.objective == "D"
    changed = CongealSettings.for_preset("lfw", learning_rate=1e-3, transform="affine")
    assert (changed.learning_rate, changed.transform) == (1e-3, "affine")
    assert CongealSettings.for_preset("mnist") == CongealSettings(preset="mnist")
    with pytest.raises(ValueError, match="Unknown preset='faces'"):
        CongealSettings.for_preset("faces")


def test_every_preset_setting_is_a_settings_field():
    fields = {f.name for f in dataclasses.fields(CongealSettings)}
    for name, preset in PRESETS.items():
        assert set(preset["settings"]) <= fields - {"preset"}, name


@pytest.mark.parametrize("num_images,batch_size,epochs,min_steps,expected", [
    (1000, 64, 30, 0, 30),     # 16 steps an epoch: epochs as given
    (250, 64, 30, 500, 125),   # 4 steps an epoch: 125 epochs for 500 steps
    (42, 64, 30, 500, 500),    # 1 step an epoch
    (1000, 64, 30, 100, 30),   # already more steps than asked
])
def test_epochs_for_covers_min_steps(num_images, batch_size, epochs, min_steps, expected):
    settings = CongealSettings(batch_size=batch_size, epochs=epochs, min_steps=min_steps)
    assert settings.epochs_for(num_images) == expected


def test_auto_preset_from_the_image_shape():
    assert preset_for_size(28, 28) == "mnist"
    assert preset_for_size(64, 64, 1) == "mnist"
    assert preset_for_size(64, 64, 3) == "lfw"  # colour: photographs
    assert preset_for_size(65, 40, 1) == "lfw"
