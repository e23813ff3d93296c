"""`CongealSettings`: everything a congealing run needs, with the defaults that
worked best across the paper's MNIST protocols. Imports no Keras, so the
command line can show its defaults instantly; written as JSON beside outputs.
"""

import dataclasses
import json
import math

from keras_congeal.constants import SETTING_CHOICES

__all__ = ["CongealSettings"]


@dataclasses.dataclass(frozen=True)
class CongealSettings:
    """Settings of a congealing run. Defaults: the best found across the
    paper's MNIST protocols (perspective sigma up to 30%) on a CPU budget; see
    `benchmarks/results/sweep_gpu.md`. Notably `transform="affine"`: homography
    gains ~0.5 dB at sigma 20% but its content scale drifts at 30%.

    Attributes:
        preset: `"mnist"`, `"lfw"` or `None` (chosen from the image size).
        transform: transform family (`"homography"`, `"affine"`, ...).
        fusion: DeSTNet fusion, `"additive"` (the paper's) or `"compose"`.
        objective: `"D+C"` (the paper's), `"D"` or `"C"`.
        reference: `"medoid"`, `"mean"`, an image index, or a path to an
            image file (resolved by the caller).
        epochs, batch_size, learning_rate: the optimisation (Adam).
        learning_rate_schedule: `"cosine"`: the learning rate decays along a
            cosine to a tenth of `learning_rate` by the run's last step
            (counted by the optimizer's `iterations`, so a run resumed from
            a backup continues the decay); `"constant"`: it stays. On long
            runs a constant rate makes Adam's loss spike and can collapse
            the alignment (`benchmarks/results/stability_gpu.md`).
        lam: `lambda` of Eq. (8); gamma, k: the positional penalty;
        code_size: `|z|` (`None`: the preset's).
        ink_weight: weight of the ink-preservation penalty (0 = the paper's
            loss; see `Congealer`).
        distortion_blur: Gaussian sigma (pixels) applied to both sides of
            the distortion loss (0 = none).
        scale_weight: weight of the scale anchor, which keeps the set's
            average scale at the input's (0 = none; see `Congealer`).
        distortion_features: what `D` compares: `"pixels"` (the paper's)
            or `"local-contrast"` (illumination-invariant grey structure at
            three scales; the face setting).
        distortion_target: `"reference"` (the paper's: one image) or
            `"batch-mean"` (the mean of the aligned batch's features: an
            evolving atlas, no reference image needed).
        distortion_window: sigma, as a fraction of the image side, of a
            centred Gaussian weight on `D` (0 = uniform): the face in the
            middle of a detector box counts, the background less.
        centring_weight: weight of the centring penalty, the squared batch
            mean of the warp parameters: joint alignment is defined up to one
            transform common to all images, and this pins it to the identity
            (0 = none).
        precision: `"float32"`, or `"mixed_bfloat16"`: bfloat16 compute in
            the aligner's and the auto-encoder's layers, float32 variables,
            geometry and losses (for GPUs; slow on most CPUs).
        min_steps: at least this many training steps: on a small set the
            epochs are raised to cover them (`epochs_for`).
        collapse_ink: when the monitored sample of `fit_congealer` keeps
            less than this fraction of its content (`ink_kept`), training
            stops with the weights of the last measured epoch that kept more:
            a guard against the degenerate solution that erases the content
            (0 = off).
        seed: seeds Keras, NumPy and the reference sample.

    `CongealSettings()` holds the digit defaults; `for_preset("lfw")` the
    face defaults (see `keras_congeal.presets`).
    """

    preset: str | None = None
    transform: str = "affine"
    fusion: str = "additive"
    objective: str = "D+C"
    reference: str | int = "medoid"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    learning_rate_schedule: str = "cosine"
    lam: float = 1.0
    gamma: float = 1.0
    k: int = 1
    code_size: int | None = None
    ink_weight: float = 1.0
    distortion_blur: float = 0.0
    scale_weight: float = 0.0
    distortion_features: str = "pixels"
    distortion_target: str = "reference"
    distortion_window: float = 0.0
    centring_weight: float = 0.0
    min_steps: int = 0
    collapse_ink: float = 0.5
    precision: str = "float32"
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.min_steps >= 0, "min_steps", "an integer >= 0"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.learning_rate > 0, "learning_rate", "a number > 0"),
            (self.lam >= 0, "lam", "a number >= 0"),
            (self.gamma >= 0, "gamma", "a number >= 0"),
            (self.ink_weight >= 0, "ink_weight", "a number >= 0"),
            (self.distortion_blur >= 0, "distortion_blur", "a number >= 0"),
            (self.scale_weight >= 0, "scale_weight", "a number >= 0"),
            (self.distortion_window >= 0, "distortion_window", "a number >= 0"),
            (self.centring_weight >= 0, "centring_weight", "a number >= 0"),
            (0 <= self.collapse_ink < 1, "collapse_ink", "a number in [0, 1)"),
            (self.code_size is None or self.code_size >= 1, "code_size", "an integer >= 1"),
        ]
        for name, allowed in SETTING_CHOICES.items():
            checks.append((getattr(self, name) in allowed, name, f"one of {list(allowed)}"))
        for ok, name, expected in checks:
            if not ok:
                raise ValueError(f"Invalid {name}={getattr(self, name)!r}: expected {expected}.")

    @classmethod
    def for_preset(cls, preset, **changes):
        """The defaults of `preset` (`"mnist"` or `"lfw"`), with `changes`."""
        from keras_congeal.presets import preset_settings

        return cls(**{**preset_settings(preset), "preset": preset, **changes})

    def epochs_for(self, num_images):
        """Epochs to train on `num_images` images: `epochs`, or more when
        they would give fewer than `min_steps` steps."""
        steps_per_epoch = math.ceil(num_images / self.batch_size)
        return max(self.epochs, math.ceil(self.min_steps / max(1, steps_per_epoch)))

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, config):
        """Settings from `to_dict`'s output. A setting missing from `config`
        (written before it existed) takes the value that older runs used
        where it differs from today's default (`_BEFORE_ITS_FIELD`), else
        the default."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"Unknown settings {unknown}; expected some of {sorted(known)}.")
        return cls(**{**_BEFORE_ITS_FIELD, **config})

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


# Settings added with a default other than what runs did before them: the
# value a settings file without the field was trained with.
_BEFORE_ITS_FIELD = {"learning_rate_schedule": "constant"}
