"""Keras layers: the bilinear sampler, the DeSTNet aligner and its fusion, the
penalised auto-encoder."""

from keras_congeal.layers.bilinear_sampler import BilinearSampler
from keras_congeal.layers.destnet import DeSTNet, DeSTNetFusion
from keras_congeal.layers.penalised_autoencoder import PenalisedAutoencoder

__all__ = ["BilinearSampler", "DeSTNet", "DeSTNetFusion", "PenalisedAutoencoder"]
