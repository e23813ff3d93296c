import keras
import numpy as np
import pytest

from keras_congeal.layers import DeSTNet, DeSTNetFusion
from keras_congeal.ops import geometry


def small_destnet(**kwargs):
    args = dict(num_stages=3, localisation=[[3, 4, 1], [1, 8, 1]], fusion_units=8)
    return DeSTNet(**{**args, **kwargs})


@pytest.mark.parametrize("transform", ["translation", "similarity", "affine", "homography"])
def test_starts_at_identity(transform):
    images = np.random.default_rng(0).random((4, 16, 16, 1)).astype("float32")
    params = keras.ops.convert_to_numpy(small_destnet(transform=transform)(images))
    assert params.shape == (4, geometry.num_params(transform))
    np.testing.assert_array_equal(params, 0.0)


def test_fusion_additive_and_compose():
    rng = np.random.default_rng(1)
    feats = [rng.normal(size=(2, 3)).astype("float32"), rng.normal(size=(2, 5)).astype("float32")]
    params = (rng.normal(size=(2, 6)) * 0.1).astype("float32")
    for mode in ("additive", "compose"):
        fusion = DeSTNetFusion("affine", mode)
        fusion.build(([(None, 3), (None, 5)], (None, 6)))
        kernel = (rng.normal(size=(8, 6)) * 0.05).astype("float32")
        fusion.regressor.kernel.assign(kernel)
        update = np.concatenate(feats, -1) @ kernel
        out = keras.ops.convert_to_numpy(fusion([feats, params]))
        if mode == "additive":
            np.testing.assert_allclose(out, params + update, atol=1e-6)
        else:
            expected = keras.ops.convert_to_numpy(geometry.params_to_matrix(params, "affine")) @ \
                keras.ops.convert_to_numpy(geometry.params_to_matrix(update, "affine"))
            got = keras.ops.convert_to_numpy(geometry.params_to_matrix(out, "affine"))
            np.testing.assert_allclose(got, expected, atol=1e-5)


def test_stages_see_progressively_warped_images():
    # With a non-zero first regressor, stage 2's features change with stage 1's
    # output: the dense fusion of later stages depends on the earlier warp.
    rng = np.random.default_rng(2)
    images = rng.random((2, 16, 16, 1)).astype("float32")
    net = small_destnet(transform="translation")
    base = keras.ops.convert_to_numpy(net(images))
    kernel = net.fusions[0].regressor.kernel
    kernel.assign(rng.normal(size=kernel.shape).astype("float32") * 0.05)
    moved = keras.ops.convert_to_numpy(net(images))
    assert not np.allclose(base, moved)


def test_presets_and_min_size():
    net = DeSTNet()  # Table 1's MNIST aligner
    assert net.min_input_size() == 13  # two valid 7x7 convolutions
    with pytest.raises(ValueError, match="smaller than this aligner needs"):
        net(np.zeros((1, 12, 12, 1), "float32"))
    with pytest.raises(ValueError, match="num_stages"):
        DeSTNet(num_stages=0)
    with pytest.raises(ValueError, match="Unknown fusion"):
        DeSTNet(fusion="mean")


def test_config_round_trip():
    net = small_destnet(transform="affine", fusion="compose")
    images = np.random.default_rng(3).random((2, 16, 16, 2)).astype("float32")
    net(images)
    for w in net.trainable_weights:
        w.assign(np.random.default_rng(4).normal(size=w.shape).astype("float32") * 0.05)
    clone = DeSTNet.from_config(net.get_config())
    clone(images)
    clone.set_weights(net.get_weights())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clone(images)),
                               keras.ops.convert_to_numpy(net(images)), atol=1e-6)
