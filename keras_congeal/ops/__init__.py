"""Pure functions: geometry of planar transforms and differentiable sampling."""

from keras_congeal.ops.geometry import *  # noqa: F401,F403
from keras_congeal.ops.geometry import __all__ as _geometry_all
from keras_congeal.ops.sampling import bilinear_sample, warp

__all__ = [*_geometry_all, "bilinear_sample", "warp"]
