"""Names the package accepts, in a module that imports nothing (so that the
command line can list them in `--help` without loading Keras)."""

# Transform families and their number of parameters (offsets from identity).
TRANSFORMS = {"translation": 2, "similarity": 4, "affine": 6, "homography": 8}
# How DeSTNet fuses the stages' parameter updates.
FUSIONS = ("additive", "compose")
# Losses of the Congealer: the paper's D + C, and the ablation of Sec. 3.2.
OBJECTIVES = ("D+C", "D", "C")
# Images per forward pass when aligning a set with a trained model.
ALIGN_BATCH_SIZE = 256
# What the distortion D compares, and to what.
DISTORTION_FEATURES = ("pixels", "local-contrast")
DISTORTION_TARGETS = ("reference", "batch-mean")
# Numeric precision of training: float32, or bfloat16 compute with float32
# variables, geometry and losses (`keras.mixed_precision`).
PRECISIONS = ("float32", "mixed_bfloat16")
# The learning rate over a run: constant, or a cosine decay to a tenth of it
# by the last step (`keras.optimizers.schedules.CosineDecay`).
LEARNING_RATE_SCHEDULES = ("constant", "cosine")
# The final learning rate of "cosine", as a fraction of the initial one.
COSINE_FINAL_FRACTION = 0.1
# The settings whose value is one of a few names, and those names: one table
# for `CongealSettings`' validation and the command line's choices.
SETTING_CHOICES = {
    "transform": tuple(TRANSFORMS),
    "fusion": FUSIONS,
    "objective": OBJECTIVES,
    "precision": PRECISIONS,
    "learning_rate_schedule": LEARNING_RATE_SCHEDULES,
    "distortion_features": DISTORTION_FEATURES,
    "distortion_target": DISTORTION_TARGETS,
}
