"""keras_congeal: unsupervised joint alignment (congealing) of large image sets.

Implements *Jointly Aligning Millions of Images with Deep Penalised
Reconstruction Congealing* (Annunziata, Sagonas, Cali; ICCV 2019) in Keras 3.
"""

__version__ = "0.1.0"
