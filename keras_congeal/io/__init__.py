"""Reading image sets and writing outputs atomically.

* `keras_congeal.io.images`: the readers (`open_images` for `.npy`, `.npz`,
  HDF5 and folders of PNG/JPEG files, with their checks and pixel budgets);
* `keras_congeal.io.atomic`: the one atomic-writer family (`atomic_file`,
  `AtomicOutputDir`, `NpyWriter`) and `InputError`.

Both are importable from here, as before the split.
"""

from keras_congeal.io import atomic, images
from keras_congeal.io.atomic import *  # noqa: F401,F403
from keras_congeal.io.images import *  # noqa: F401,F403

__all__ = [*atomic.__all__, *images.__all__]
