import math

import keras
from keras import ops

from keras_congeal.ops.upsampling import upsample_conv


def positional_weights(code_size, k=1):
    """The paper's penalty weights `w_l = l^k / sum_l l^k`, l = 1..code_size."""
    raw = [float(position) ** k for position in range(1, code_size + 1)]
    total = sum(raw)
    return [v / total for v in raw]


@keras.saving.register_keras_serializable(package="keras_congeal")
class PenalisedAutoencoder(keras.layers.Layer):
    """Low-capacity auto-encoder whose penalised reconstruction error is `C`.

    Eq. (7) of the paper, per image `i` of the aligned batch:
    `C_i = ||D(E(x_i)) - x_i||_1 + gamma * w^T z_i`, with `z_i = E(x_i)` in
    `[0, 1]^b` (sigmoid) and `w_l = l^k / sum l^k`, which pushes the code to
    use its first components. The layer adds `loss_weight * mean_i C_i / P`
    through `add_loss`, where `P = height * width * channels`: the L1 term is a
    per-pixel mean and the penalty is divided by `P` too, so that the two keep
    the paper's relative scale (Eq. 8 divided by the constant `batch * P`).

    Architecture (Table 1; `tanh` after every layer but the code's sigmoid):
    encoder `[conv3-F*] x n | dense-U x m | dense-|z|`, decoder
    `dense-U x m | dense-(h0*w0*c0) | [up x2, conv3-F] x n | conv1-channels`,
    where `*` is stride 2 and the decoder starts from an `h0 x w0 x c0` map
    (`h0 = ceil(H / 2^n)`) and is centre-cropped back to `H x W`. Table 1 writes
    the encoder's dense layers as `conv1` on the flattened map; they are the
    same operation.

    Args:
        code_size: int. `|z|`, the dimension of the code. Defaults to 16.
        gamma: float. Weight `gamma` of the positional penalty. Defaults to 1.
        k: int. Exponent of the positional weights. Defaults to 1.
        encoder_convs: list of `(kernel, filters)` of the strided convolutions.
        dense_units: list of int, units of the encoder's (and, mirrored, the
            decoder's) dense layers.
        bottleneck_channels: int. `c0` of the decoder's first map (Table 1:
            1 for MNIST, i.e. `conv1-16` on 28x28; 48 for LFW at 64x64).
        decoder_filters: int or None. Filters of the decoder's convolutions.
            Defaults to the encoder's.
        upsampling: str. `"resize"` (nearest-neighbour x2 then a stride-1
            convolution, computed as one sub-pixel convolution of the small
            map: `keras_congeal.ops.upsampling.upsample_conv`) or
            `"transpose"` (a stride-2 transposed convolution, as Table 1).
            Defaults to `"resize"`.
        loss_weight: float. Multiplies the added loss (the `lambda` of
            Eq. 8). Defaults to 1.

    Input shape:
        `(batch, height, width, channels)`.

    Output shape:
        A dict: `"reconstruction"` `(batch, height, width, channels)`, `"code"`
        `(batch, code_size)`, `"reconstruction_error"` and `"penalty"`
        `(batch,)` (the two terms of `C_i`, per pixel).
    """

    _SUPPORTED_UPSAMPLING = ("resize", "transpose")

    def __init__(
        self,
        code_size=16,
        gamma=1.0,
        k=1,
        encoder_convs=((3, 100), (3, 100), (3, 100)),
        dense_units=(1024, 1024),
        bottleneck_channels=1,
        decoder_filters=None,
        upsampling="resize",
        loss_weight=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if code_size < 1:
            raise ValueError(f"Expected code_size >= 1, received {code_size}.")
        if gamma < 0:
            raise ValueError(f"Expected gamma >= 0, received {gamma}.")
        if upsampling not in self._SUPPORTED_UPSAMPLING:
            raise ValueError(
                f"Unknown upsampling={upsampling!r}. Expected one of {self._SUPPORTED_UPSAMPLING}."
            )
        self.code_size = int(code_size)
        self.gamma = float(gamma)
        self.k = int(k)
        self.encoder_convs = [tuple(int(v) for v in spec) for spec in encoder_convs]
        self.dense_units = [int(u) for u in dense_units]
        self.bottleneck_channels = int(bottleneck_channels)
        self.decoder_filters = decoder_filters
        self.upsampling = upsampling
        self.loss_weight = float(loss_weight)

    def build(self, input_shape):
        height, width, channels = input_shape[1], input_shape[2], input_shape[3]
        factor = 2 ** len(self.encoder_convs)
        h0, w0 = math.ceil(height / factor), math.ceil(width / factor)
        self._crop = ((h0 * factor - height) // 2, (w0 * factor - width) // 2)
        self._size = (height, width)
        dtype = self.dtype_policy

        encoder = [
            keras.layers.Conv2D(
                f,
                k,
                strides=2,
                padding="same",
                activation="tanh",
                dtype=dtype,
                name=f"encoder_conv{i}",
            )
            for i, (k, f) in enumerate(self.encoder_convs)
        ]
        encoder.append(keras.layers.Flatten(dtype=dtype, name="encoder_flatten"))
        encoder += [
            keras.layers.Dense(u, activation="tanh", dtype=dtype, name=f"encoder_dense{i}")
            for i, u in enumerate(self.dense_units)
        ]
        encoder.append(
            keras.layers.Dense(self.code_size, activation="sigmoid", dtype=dtype, name="code")
        )
        self.encoder = keras.Sequential(encoder, name="encoder")

        decoder = [
            keras.layers.Dense(u, activation="tanh", dtype=dtype, name=f"decoder_dense{i}")
            for i, u in enumerate(self.dense_units)
        ]
        decoder += [
            keras.layers.Dense(
                h0 * w0 * self.bottleneck_channels,
                activation="tanh",
                dtype=dtype,
                name="decoder_bottleneck",
            ),
            keras.layers.Reshape(
                (h0, w0, self.bottleneck_channels), dtype=dtype, name="decoder_reshape"
            ),
        ]
        for i, (kernel, filters) in enumerate(reversed(self.encoder_convs)):
            filters = self.decoder_filters or filters
            if self.upsampling == "resize":
                decoder += [
                    keras.layers.UpSampling2D(2, dtype=dtype, name=f"decoder_up{i}"),
                    keras.layers.Conv2D(
                        filters,
                        kernel,
                        padding="same",
                        activation="tanh",
                        dtype=dtype,
                        name=f"decoder_conv{i}",
                    ),
                ]
            else:
                decoder.append(
                    keras.layers.Conv2DTranspose(
                        filters,
                        kernel,
                        strides=2,
                        padding="same",
                        activation="tanh",
                        dtype=dtype,
                        name=f"decoder_conv{i}",
                    )
                )
        decoder.append(
            keras.layers.Conv2D(channels, 1, activation="tanh", dtype=dtype, name="decoder_output")
        )
        self.decoder = keras.Sequential(decoder, name="decoder")
        self.encoder.build(input_shape)
        self.decoder.build((None, self.code_size))
        self._weights_w = positional_weights(self.code_size, self.k)

    def encode(self, images):
        """Images (B, H, W, C) -> codes (B, code_size) in [0, 1]."""
        return self.encoder(images)

    def decode(self, code):
        """Codes (B, code_size) -> reconstructions (B, H, W, C)."""
        if self.upsampling != "resize":
            decoded = self.decoder(code)
            top, left = self._crop
            return decoded[:, top : top + self._size[0], left : left + self._size[1], :]
        # The decoder's layers, with each `UpSampling2D` and the convolution
        # after it computed as one sub-pixel convolution of the small map
        # (`upsample_conv`: the same result, 2.25x fewer multiply-adds for
        # 3x3 kernels), the last one only over the window kept by the crop
        # (the output convolution after it is 1x1).
        layers = self.decoder.layers
        last_up = max(
            i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.UpSampling2D)
        )
        x = code
        i = 0
        while i < len(layers):
            layer = layers[i]
            if not isinstance(layer, keras.layers.UpSampling2D):
                x = layer(x)
                i += 1
                continue
            conv = layers[i + 1]
            window = {}
            if i == last_up:
                window = {"output_offset": self._crop, "output_size": self._size}
            x = ops.cast(x, conv.compute_dtype)
            x = conv.activation(
                upsample_conv(
                    x,
                    ops.cast(conv.kernel, conv.compute_dtype),
                    ops.cast(conv.bias, conv.compute_dtype),
                    **window,
                )
            )
            i += 2
        return x

    def call(self, images):
        code = self.encode(images)
        reconstruction = self.decode(code)
        pixels = images.shape[1] * images.shape[2] * images.shape[3]
        # The loss terms in the variables' precision (float32 under a mixed
        # policy), whatever the compute precision of the layers.
        dtype = self.dtype_policy.variable_dtype
        error = ops.mean(
            ops.abs(ops.cast(reconstruction, dtype) - ops.cast(images, dtype)), axis=(1, 2, 3)
        )
        w = ops.convert_to_tensor(self._weights_w, dtype=dtype)
        penalty = self.gamma * ops.sum(ops.cast(code, dtype) * w, axis=-1) / pixels
        if self.loss_weight:
            self.add_loss(self.loss_weight * ops.mean(error + penalty))
        return {
            "reconstruction": reconstruction,
            "code": code,
            "reconstruction_error": error,
            "penalty": penalty,
        }

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return {
            "reconstruction": tuple(input_shape),
            "code": (batch, self.code_size),
            "reconstruction_error": (batch,),
            "penalty": (batch,),
        }

    def get_config(self):
        config = {
            "code_size": self.code_size,
            "gamma": self.gamma,
            "k": self.k,
            "encoder_convs": [list(spec) for spec in self.encoder_convs],
            "dense_units": self.dense_units,
            "bottleneck_channels": self.bottleneck_channels,
            "decoder_filters": self.decoder_filters,
            "upsampling": self.upsampling,
            "loss_weight": self.loss_weight,
        }
        return {**super().get_config(), **config}
