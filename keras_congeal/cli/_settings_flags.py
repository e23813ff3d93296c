"""The `congeal` command's settings flags: one per `CongealSettings` field,
their defaults the dataclass's, and the values given checked by it."""

import dataclasses
import os

__all__ = ["SETTING_FLAGS", "add_setting_arguments", "given_settings"]

# CongealSettings field -> its flag.
SETTING_FLAGS = {
    "preset": "--preset",
    "transform": "--transform",
    "fusion": "--fusion",
    "objective": "--objective",
    "reference": "--reference",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "learning_rate": "--learning-rate",
    "learning_rate_schedule": "--learning-rate-schedule",
    "lam": "--lambda",
    "gamma": "--gamma",
    "k": "--k",
    "code_size": "--code-size",
    "ink_weight": "--ink-weight",
    "distortion_blur": "--distortion-blur",
    "scale_weight": "--scale-weight",
    "distortion_features": "--distortion-features",
    "distortion_target": "--distortion-target",
    "distortion_window": "--distortion-window",
    "centring_weight": "--centring-weight",
    "min_steps": "--min-steps",
    "collapse_ink": "--collapse-ink",
    "precision": "--precision",
    "seed": "--seed",
}


def _reference(value):
    """`--reference`: a strategy name, an image index, or a path to an image."""
    from keras_congeal.reference import STRATEGIES

    if value in STRATEGIES:
        return value
    try:
        return int(value)
    except ValueError:
        return os.path.abspath(value)


def add_setting_arguments(parser):
    """One flag per `CongealSettings` field; their defaults are the dataclass's."""
    from keras_congeal.constants import SETTING_CHOICES
    from keras_congeal.presets import PRESETS, preset_settings
    from keras_congeal.reference import STRATEGIES
    from keras_congeal.settings import CongealSettings

    defaults = CongealSettings()
    faces = preset_settings("lfw")
    group = parser.add_argument_group(
        "settings", "defaults are those of the preset (keras_congeal.settings.CongealSettings"
        ".for_preset): the digit defaults, and the face defaults for --preset lfw where "
        "shown; with --resume, those not given are the interrupted run's"
    )
    specs = {
        "preset": ({"choices": ["auto", *sorted(PRESETS)]},
                   "architecture of the paper's Table 1 and its training defaults",
                   "auto: mnist for greyscale images up to 64 pixels, lfw for colour or "
                   "larger images"),
        "transform": ({"choices": sorted(SETTING_CHOICES["transform"])}, "transform family", None),
        "fusion": ({"choices": list(SETTING_CHOICES["fusion"])},
                   "how DeSTNet stages combine (additive is the paper's)", None),
        "objective": ({"choices": list(SETTING_CHOICES["objective"])},
                      "loss: D+C the paper's; D distortion only; C complexity only", None),
        "reference": ({"type": _reference, "metavar": f"{'|'.join(STRATEGIES)}|INDEX|PATH"},
                      "the image the distortion term aligns to: a strategy, an image index, "
                      "or a PNG/JPEG file of the images' size", None),
        "epochs": ({"type": int, "metavar": "N"}, "training epochs", None),
        "batch_size": ({"type": int, "metavar": "N"}, "images per training step", None),
        "learning_rate": ({"type": float, "metavar": "LR"}, "Adam's learning rate", None),
        "learning_rate_schedule": ({"choices": list(SETTING_CHOICES["learning_rate_schedule"])},
                                   "cosine: decays to a tenth by the last step (steadier on "
                                   "long runs); constant", None),
        "lam": ({"type": float, "metavar": "LAMBDA", "dest": "lam"},
                "weight of the complexity term (lambda of Eq. 8)", None),
        "gamma": ({"type": float}, "strength of the positional penalty on the code", None),
        "k": ({"type": int}, "k of the positional penalty", None),
        "code_size": ({"type": int, "metavar": "N"}, "size of the auto-encoder's code |z|",
                      "the preset's"),
        "ink_weight": ({"type": float, "metavar": "W"},
                       "weight of the ink-preservation penalty (0: the paper's loss)", None),
        "distortion_blur": ({"type": float, "metavar": "SIGMA"},
                            "Gaussian blur (pixels) of both sides of the distortion (0: none)",
                            None),
        "scale_weight": ({"type": float, "metavar": "W"},
                         "weight of the scale anchor: keeps the set's mean scale (0: none)",
                         None),
        "distortion_features": ({"choices": list(SETTING_CHOICES["distortion_features"])},
                                "what the distortion compares: pixels (the paper's) or "
                                "local-contrast (illumination-invariant structure)", None),
        "distortion_target": ({"choices": list(SETTING_CHOICES["distortion_target"])},
                              "what the distortion compares with: the reference image, or "
                              "the aligned batch's mean", None),
        "distortion_window": ({"type": float, "metavar": "SIGMA"},
                              "centred Gaussian weight on the distortion, sigma as a "
                              "fraction of the image side (0: uniform)", None),
        "centring_weight": ({"type": float, "metavar": "W"},
                            "weight of the centring penalty: keeps the set's mean warp at "
                            "the identity (0: none)", None),
        "min_steps": ({"type": int, "metavar": "N"},
                      "train at least N steps (more epochs on small sets)", None),
        "collapse_ink": ({"type": float, "metavar": "FRACTION"},
                         "stop training, with the last healthy epoch's weights, when the "
                         "monitored sample keeps less than this fraction of its content "
                         "(0: off)", None),
        "precision": ({"choices": list(SETTING_CHOICES["precision"])},
                      "float32, or bfloat16 compute with float32 geometry and losses "
                      "(GPUs)", None),
        "seed": ({"type": int}, "seeds Keras, NumPy and the reference sample", None),
    }
    missing = set(SETTING_FLAGS) ^ {f.name for f in dataclasses.fields(CongealSettings)}
    if missing:  # a new setting needs its flag
        raise RuntimeError(f"CongealSettings fields without a flag (or stale flags): {missing}")
    for name, flag in SETTING_FLAGS.items():
        options, text, shown = specs[name]
        if shown is None:
            shown = getattr(defaults, name)
            if name in faces:
                shown = f"{shown}; lfw: {faces[name]}"
        group.add_argument(flag, default=None, help=f"{text} (default: {shown})",
                           **{"dest": name, **options})


def given_settings(parser, args):
    """The `CongealSettings` fields given on the command line, checked."""
    from keras_congeal.settings import CongealSettings

    given = {name: getattr(args, name) for name in SETTING_FLAGS
             if getattr(args, name) is not None}
    if given.get("preset") == "auto":
        given["preset"] = None
    try:
        CongealSettings(**given)
    except ValueError as error:
        message = str(error)
        for name, flag in SETTING_FLAGS.items():
            message = message.replace(f"Invalid {name}=", f"invalid {flag} ")
        parser.error(message.rstrip("."))
    return given
