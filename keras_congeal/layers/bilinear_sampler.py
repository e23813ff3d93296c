import keras

from keras_congeal.ops import geometry, sampling


@keras.saving.register_keras_serializable(package="keras_congeal")
class BilinearSampler(keras.layers.Layer):
    """Warps each image of a batch by its own transform, differentiably.

    Convention: the parameters are offsets from the identity of a
    `src_from_dst` matrix in *normalised* coordinates (corner pixel centres at
    -1 and +1; see `keras_congeal.ops.geometry`). Output pixel `(x, y)` (x =
    column, y = row, pixel centres at integers) takes the bilinear
    interpolation of the input at `P @ (x, y, 1)`, where `P` is that matrix in
    pixel coordinates. Points outside the input read **zeros**; a point within
    one pixel of the border blends the border pixel with zero (ONNX
    `GridSample(align_corners=1, padding_mode="zeros")`). Gradients flow to the
    images and to the parameters. Zero parameters return the input exactly.

    Args:
        transform: str. The transform family, one of `"translation"`,
            `"similarity"`, `"affine"`, `"homography"`. Defaults to
            `"homography"`.
        output_size: tuple `(height, width)` of the output, or `None` for the
            input's size. Since the parameters are normalised, the same
            parameters warp an image of any size consistently.

    Input shape:
        A list `[images, params]`: images `(batch, height, width, channels)`,
        params `(batch, n)` with `n` the number of parameters of `transform`.

    Output shape:
        `(batch, out_height, out_width, channels)`.

    Example:

    >>> sampler = BilinearSampler(transform="translation")
    >>> images = np.random.rand(2, 28, 28, 1).astype("float32")
    >>> params = np.zeros((2, 2), "float32")
    >>> np.allclose(sampler([images, params]), images)
    True
    """

    def __init__(self, transform="homography", output_size=None, **kwargs):
        super().__init__(**kwargs)
        self.transform = geometry.check_transform(transform)
        self.output_size = tuple(output_size) if output_size is not None else None

    def _sizes(self, images_shape):
        src_size = (images_shape[1], images_shape[2])
        return src_size, self.output_size or src_size

    def pixel_matrices(self, params, images_shape):
        """`src_from_dst` matrices (B, 3, 3) in pixel coordinates."""
        src_size, dst_size = self._sizes(images_shape)
        delta = geometry.params_to_delta(params, self.transform)
        return geometry.delta_to_pixel_matrix(delta, src_size, dst_size)

    def call(self, inputs):
        images, params = inputs
        if len(images.shape) != 4:
            raise ValueError(
                "Expected `images` of rank 4 (batch, height, width, channels), "
                f"received shape {tuple(images.shape)}."
            )
        params = keras.ops.cast(params, images.dtype)
        matrices = self.pixel_matrices(params, images.shape)
        return sampling.current_warp()(images, matrices, self._sizes(images.shape)[1])

    def compute_output_shape(self, input_shape):
        images_shape = input_shape[0]
        height, width = self._sizes(images_shape)[1]
        return (images_shape[0], height, width, images_shape[3])

    def get_config(self):
        config = {"transform": self.transform, "output_size": self.output_size}
        return {**super().get_config(), **config}
