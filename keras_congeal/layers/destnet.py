import keras
from keras import ops

from keras_congeal.constants import FUSIONS
from keras_congeal.layers.bilinear_sampler import BilinearSampler
from keras_congeal.ops import geometry


@keras.saving.register_keras_serializable(package="keras_congeal")
class DeSTNetFusion(keras.layers.Layer):
    """The fusion `F` of a DeSTNet stage: all stages' features -> new parameters.

    DeSTNet (Annunziata et al., BMVC 2018) connects its stacked spatial
    transformers densely: the parameter update of stage `i` is regressed from
    the concatenated features of stages `1..i` (each contributing
    `fusion_units` features, the "expansion rate" `k^F`), then fused with the
    parameters so far:

    * `"additive"` (the paper's): `p_i = p_{i-1} + delta_i`;
    * `"compose"`: `M(p_i) = M(p_{i-1}) @ M(delta_i)`, i.e. the update is
      expressed in the frame of the image already warped by `p_{i-1}`, which
      is what the stage's localisation network sees.

    The regressor starts at the identity (zero kernel, zero bias): a new
    transformer must begin by passing the image through unchanged, otherwise
    the first gradient steps chase a random warp (see IC-STN, GANgealing).

    Args:
        transform: str. Transform family of the parameters.
        fusion: str. `"additive"` or `"compose"`. Defaults to `"additive"`.

    Input shape:
        A list `[features, params]`: `features` a list of tensors
        `(batch, k_j)`, `params` `(batch, n)`.

    Output shape:
        `(batch, n)`: the fused parameters.
    """

    _SUPPORTED_FUSION = FUSIONS

    def __init__(self, transform="homography", fusion="additive", **kwargs):
        super().__init__(**kwargs)
        if fusion not in self._SUPPORTED_FUSION:
            raise ValueError(
                f"Unknown fusion={fusion!r}. Expected one of {self._SUPPORTED_FUSION}."
            )
        self.transform = geometry.check_transform(transform)
        self.fusion = fusion
        self.regressor = keras.layers.Dense(
            geometry.num_params(transform),
            kernel_initializer="zeros",
            bias_initializer="zeros",
            dtype=self.dtype_policy,
            name="regressor",
        )

    def build(self, input_shape):
        features_shapes, _ = input_shape
        total = sum(shape[-1] for shape in features_shapes)
        self.regressor.build((None, total))

    def call(self, inputs):
        features, params = inputs
        update = self.regressor(ops.concatenate(list(features), axis=-1))
        if self.fusion == "additive":
            return params + update
        return geometry.compose_params(params, update, self.transform)

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def get_config(self):
        config = {"transform": self.transform, "fusion": self.fusion}
        return {**super().get_config(), **config}


@keras.saving.register_keras_serializable(package="keras_congeal")
class DeSTNet(keras.layers.Layer):
    """Densely fused stacked spatial transformers: images -> warp parameters.

    Stage `i` warps the *original* images by the parameters fused so far (so
    no image is resampled twice), passes them through its localisation
    network (the convolutions of `localisation`, then a dense layer of
    `fusion_units` features), and a `DeSTNetFusion` regresses the update from
    the features of stages `1..i`. The first stage sees the input itself.

    Args:
        transform: str. Transform family. Defaults to `"homography"` (Table 1's
            8 outputs).
        num_stages: int. Number of stacked transformers `K`. Defaults to 4.
        localisation: list of `(kernel_size, filters, strides)` for each
            convolution of a stage's localisation network. Defaults to Table
            1's MNIST aligner, `[(7, 4, 1), (7, 8, 1), (1, 8, 1)]`.
        fusion_units: int. Features each stage contributes to the dense
            fusion (DeSTNet's expansion rate `k^F`). Defaults to 32.
        fusion: str. `"additive"` (the paper's) or `"compose"`.
        padding: str. Padding of the localisation convolutions. Defaults to
            `"valid"`.
        activation: str. Activation of the localisation layers. Defaults to
            `"relu"`.

    Input shape:
        `(batch, height, width, channels)`, values in [0, 1].

    Output shape:
        `(batch, n)`: normalised offset parameters of `src_from_dst`
        (see `BilinearSampler`).
    """

    def __init__(
        self,
        transform="homography",
        num_stages=4,
        localisation=((7, 4, 1), (7, 8, 1), (1, 8, 1)),
        fusion_units=32,
        fusion="additive",
        padding="valid",
        activation="relu",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_stages < 1:
            raise ValueError(f"Expected num_stages >= 1, received {num_stages}.")
        self.transform = geometry.check_transform(transform)
        self.num_stages = int(num_stages)
        self.localisation = [tuple(int(v) for v in spec) for spec in localisation]
        self.fusion_units = int(fusion_units)
        self.fusion = fusion
        self.padding = padding
        self.activation = activation

        # The geometry (sampling and parameter updates) runs at the variables'
        # precision: float32 under a mixed policy such as "mixed_bfloat16".
        geometry_dtype = self.dtype_policy.variable_dtype
        self.sampler = BilinearSampler(transform, dtype=geometry_dtype, name="sampler")
        self.stages = []
        self.fusions = []
        for i in range(self.num_stages):
            layers = [
                keras.layers.Conv2D(
                    filters,
                    kernel,
                    strides=strides,
                    padding=padding,
                    activation=activation,
                    dtype=self.dtype_policy,
                    name=f"stage{i}_conv{j}",
                )
                for j, (kernel, filters, strides) in enumerate(self.localisation)
            ]
            layers += [
                keras.layers.Flatten(dtype=self.dtype_policy, name=f"stage{i}_flatten"),
                keras.layers.Dense(
                    self.fusion_units,
                    activation=activation,
                    dtype=self.dtype_policy,
                    name=f"stage{i}_features",
                ),
            ]
            self.stages.append(keras.Sequential(layers, name=f"stage{i}"))
            self.fusions.append(
                DeSTNetFusion(transform, fusion, dtype=geometry_dtype, name=f"fusion{i}")
            )

    def min_input_size(self):
        """Smallest (height, width) whose localisation maps are non-empty."""
        size = 1
        for kernel, _, strides in reversed(self.localisation):
            if self.padding == "valid":
                size = (size - 1) * strides + kernel
            else:
                size = (size - 1) * strides + 1
        return max(size, 2)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "Expected images of rank 4 (batch, height, width, channels), "
                f"received shape {tuple(input_shape)}."
            )
        minimum = self.min_input_size()
        if input_shape[1] < minimum or input_shape[2] < minimum:
            raise ValueError(
                f"Images of {input_shape[1]}x{input_shape[2]} pixels are smaller "
                f"than this aligner needs ({minimum}x{minimum} for its "
                f"localisation network {self.localisation}, padding "
                f"{self.padding!r})."
            )
        n = geometry.num_params(self.transform)
        for i, (stage, fusion) in enumerate(zip(self.stages, self.fusions, strict=True)):
            stage.build(input_shape)
            fusion.build(([(None, self.fusion_units)] * (i + 1), (None, n)))

    def call(self, images):
        batch = ops.shape(images)[0]
        params = ops.zeros((batch, geometry.num_params(self.transform)), images.dtype)
        features = []
        for i, (stage, fusion) in enumerate(zip(self.stages, self.fusions, strict=True)):
            warped = images if i == 0 else self.sampler([images, params])
            features.append(stage(warped))
            params = fusion([features, params])
        return params

    def compute_output_shape(self, input_shape):
        return (input_shape[0], geometry.num_params(self.transform))

    def get_config(self):
        config = {
            "transform": self.transform,
            "num_stages": self.num_stages,
            "localisation": [list(spec) for spec in self.localisation],
            "fusion_units": self.fusion_units,
            "fusion": self.fusion,
            "padding": self.padding,
            "activation": self.activation,
        }
        return {**super().get_config(), **config}
