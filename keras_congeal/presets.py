"""Presets: the architectures of the seed paper's Table 1, as plain dicts of
constructor arguments for `DeSTNet` and `PenalisedAutoencoder`, and the
training settings that go with them (`CongealSettings.for_preset`).

Imports nothing, so the command line can read it before Keras loads.
"""

PRESETS = {
    # Table 1, MNIST: F{[conv7-4 | conv7-8 | conv1-8] x 4}; encoder
    # [conv3-100*] x 3 | [conv1-1024] x 2 | conv1-|z|; decoder
    # [conv1-1024] x 2 | conv1-16 | [conv3-100*] x 3 | conv1-1.
    "mnist": {
        "description": "Table 1's MNIST model (28x28 digits; any size up to ~64 px).",
        "aligner": {
            "num_stages": 4,
            "localisation": [[7, 4, 1], [7, 8, 1], [1, 8, 1]],
            "fusion_units": 32,
            "padding": "valid",
        },
        "autoencoder": {
            "code_size": 16,
            "encoder_convs": [[3, 100], [3, 100], [3, 100]],
            "dense_units": [1024, 1024],
            "bottleneck_channels": 1,
        },
        # The CongealSettings defaults (tuned on the MNIST protocols).
        "settings": {},
    },
    # Table 1, LFW: F{[conv3-64* | conv3-128* | conv3-256* | conv1-8] x 5};
    # encoder [conv3-128*] x 3 | [conv1-512] x 2 | conv1-|z|; decoder
    # [conv1-512] x 2 | conv1-3072 | [conv3-128*] x 3 | conv1-3.
    "lfw": {
        "description": "Table 1's LFW model (faces, ~64-250 px).",
        "aligner": {
            "num_stages": 5,
            "localisation": [[3, 64, 2], [3, 128, 2], [3, 256, 2], [1, 8, 1]],
            "fusion_units": 32,
            "padding": "same",
        },
        "autoencoder": {
            "code_size": 32,
            "encoder_convs": [[3, 128], [3, 128], [3, 128]],
            "dense_units": [512, 512],
            "bottleneck_channels": 48,
        },
        # Faces (benchmarks/lfw.py, README "Faces"): the paper's RGB L1 to one
        # reference drifts on photographs (landmark error above the input's).
        # What aligns them: D on local-contrast features (illumination-
        # invariant), compared with the aligned batch's mean (an evolving
        # atlas) under a centred window, the set's mean warp pinned to the
        # identity, similarity warps; no ink penalty (faces fill the frame).
        # C adds nothing measurable there at 3x the cost: objective D.
        "settings": {
            "transform": "similarity",
            "objective": "D",
            "learning_rate": 3e-4,
            # Measured with a constant rate (face runs are short: ~500 steps).
            "learning_rate_schedule": "constant",
            "ink_weight": 0.0,
            "distortion_features": "local-contrast",
            "distortion_target": "batch-mean",
            "distortion_window": 0.3,
            "centring_weight": 10.0,
            "min_steps": 500,
        },
    },
}


def get_preset(name):
    """Returns a copy of preset `name`'s constructor arguments."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset={name!r}. Expected one of {sorted(PRESETS)}.")
    preset = PRESETS[name]
    return {"aligner": dict(preset["aligner"]), "autoencoder": dict(preset["autoencoder"])}


def preset_settings(name):
    """A copy of preset `name`'s training settings (`CongealSettings` fields
    that differ from the defaults)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset={name!r}. Expected one of {sorted(PRESETS)}.")
    return dict(PRESETS[name]["settings"])


def preset_for_size(height, width, channels=1):
    """The preset that suits images of `height x width x channels`: `mnist`
    for greyscale images up to 64 px (digits, characters), `lfw` for colour
    images and larger ones (photographs)."""
    return "mnist" if max(height, width) <= 64 and channels == 1 else "lfw"
