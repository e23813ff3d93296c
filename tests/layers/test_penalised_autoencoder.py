import keras
import numpy as np
import pytest

from keras_congeal.layers import PenalisedAutoencoder
from keras_congeal.layers.penalised_autoencoder import positional_weights


def small_ae(**kwargs):
    args = dict(
        code_size=4, encoder_convs=[[3, 8], [3, 8], [3, 8]], dense_units=[16], bottleneck_channels=2
    )
    return PenalisedAutoencoder(**{**args, **kwargs})


def test_positional_weights():
    np.testing.assert_allclose(positional_weights(4, 1), [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_allclose(positional_weights(3, 2), np.array([1, 4, 9]) / 14)


@pytest.mark.parametrize("upsampling", ["resize", "transpose"])
@pytest.mark.parametrize("size", [(28, 28, 1), (20, 36, 3)])
def test_shapes_and_code_range(upsampling, size):
    images = np.random.default_rng(0).random((3, *size)).astype("float32")
    out = small_ae(upsampling=upsampling)(images)
    assert tuple(out["reconstruction"].shape) == (3, *size)
    code = keras.ops.convert_to_numpy(out["code"])
    assert code.shape == (3, 4) and np.all((code >= 0) & (code <= 1))


@pytest.mark.parametrize("size", [(28, 28, 1), (20, 36, 3)])
def test_decode_equals_the_decoder_layers_then_the_crop(size):
    # `decode` computes each upsampling and convolution as one sub-pixel
    # convolution; the decoder's layers, called one after the other, are the
    # plain formulation.
    ae = small_ae(encoder_convs=[[3, 8], [5, 8], [3, 6]])
    ae.build((None, *size))
    code = np.random.default_rng(2).random((3, 4)).astype("float32")
    whole = keras.ops.convert_to_numpy(ae.decoder(code))
    top, left = (whole.shape[1] - size[0]) // 2, (whole.shape[2] - size[1]) // 2
    expected = whole[:, top : top + size[0], left : left + size[1]]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(ae.decode(code)), expected, atol=1e-5)
    assert np.abs(expected).max() > 1e-3


def test_added_loss_is_the_penalised_l1_error():
    images = np.random.default_rng(1).random((5, 16, 16, 1)).astype("float32")
    ae = small_ae(gamma=2.0, loss_weight=0.5)
    out = ae(images)
    rec = keras.ops.convert_to_numpy(out["reconstruction"])
    code = keras.ops.convert_to_numpy(out["code"])
    error = np.abs(rec - images).mean(axis=(1, 2, 3))
    penalty = 2.0 * code @ np.array(positional_weights(4)) / (16 * 16)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(out["reconstruction_error"]), error, rtol=1e-5
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(out["penalty"]), penalty, rtol=1e-5)
    assert len(ae.losses) == 1
    np.testing.assert_allclose(float(ae.losses[0]), 0.5 * np.mean(error + penalty), rtol=1e-5)


def test_no_loss_when_weight_is_zero_and_errors():
    ae = small_ae(loss_weight=0.0)
    ae(np.zeros((1, 8, 8, 1), "float32"))
    assert len(ae.losses) == 0
    with pytest.raises(ValueError, match="code_size"):
        PenalisedAutoencoder(code_size=0)
    with pytest.raises(ValueError, match="upsampling"):
        PenalisedAutoencoder(upsampling="bicubic")


def test_config_round_trip():
    ae = small_ae(gamma=0.5, k=2, upsampling="transpose")
    clone = PenalisedAutoencoder.from_config(ae.get_config())
    assert clone.get_config() == ae.get_config()
