import keras
import numpy as np
from keras import ops

from keras_congeal.constants import (
    ALIGN_BATCH_SIZE,
    DISTORTION_FEATURES,
    DISTORTION_TARGETS,
    OBJECTIVES,
    PRECISIONS,
)
from keras_congeal.io.images import value_range_of
from keras_congeal.layers import BilinearSampler, DeSTNet, PenalisedAutoencoder
from keras_congeal.ops import filters, geometry
from keras_congeal.presets import get_preset
from keras_congeal.settings import CongealSettings

_EPS = 1e-6
# Local-contrast features of `distortion_features="local-contrast"`: blur
# sigmas and normalisation window, as fractions of the image width (at 64 px:
# 4, 2 and 1 pixels; window 4 pixels).
LOCAL_CONTRAST_SCALES = (1 / 16, 1 / 32, 1 / 64)
LOCAL_CONTRAST_WINDOW = 1 / 16


@keras.saving.register_keras_serializable(package="keras_congeal")
class Congealer(keras.Model):
    """Deep penalised reconstruction congealing: aligner + auto-encoder + reference.

    Trains with no labels on the loss of the paper's Eq. (8),

        L = D + lambda * C + mu * K,

    all attached with `add_loss`, so that `compile(optimizer=...)` then
    `fit(images)` trains it:

    * `D`, the distortion: mean over the batch of the per-pixel L1 distance
      between each aligned image and the reference image (Eq. 5);
    * `C`, the complexity: the penalised auto-encoder's loss on the aligned
      batch (Eq. 7; see `PenalisedAutoencoder`);
    * `S`, the **scale anchor** (another deviation): `(mean_i log|det J_i|)^2`,
      `J_i` the Jacobian of warp `i` at the image centre. Joint alignment is
      only defined up to one transform common to all images; on images whose
      content fills the frame (faces) the set drifts towards a common zoom-in,
      which lowers `D` and `C` without aligning anything. `S` fixes the
      average scale of the set to the input's while leaving each image free
      to scale. `scale_weight=0` removes it.
    * `K`, the **ink-preservation** penalty, a deviation from the paper:
      `mean_i log(sum(aligned_i) / sum(input_i))^2`. Without it, `D` and `C`
      are both lowered by shrinking the content or warping it out of the
      frame (an empty image is closer in L1 to a thin-stroke reference than a
      misaligned digit is), and training collapses while APSNR climbs. `K`
      asks each warp to keep the image's content in the frame at its scale.
      `ink_weight=0` gives the paper's loss exactly.

    Args:
        aligner: a `DeSTNet` (or any layer mapping images to the offset
            parameters of `aligner.transform`).
        autoencoder: a `PenalisedAutoencoder`, or `None` when `objective`
            is `"D"`.
        reference: array (H, W, C), values in [0, 1]: the image `I_j` that
            `D` aligns to. Saved with the model.
        objective: str. `"D+C"` (the paper's method), `"D"` or `"C"` (the
            ablation of Sec. 3.2). Defaults to `"D+C"`.
        lam: float. `lambda` of Eq. (8). Defaults to 1.
        ink_weight: float. `mu`, the weight of the ink-preservation penalty.
            Defaults to 1.
        scale_weight: float. Weight of the scale anchor `S`. Defaults to 0.
        distortion_blur: float. Gaussian sigma (pixels) applied to both the
            aligned images and the reference inside `D`. Defaults to 0.

    Call returns a dict: `"aligned"` (B, H, W, C), `"params"` (B, n) and the
    per-image terms `"distortion"`, `"complexity"` and `"ink_log_ratio"` (B,).

    Example:

    >>> congealer = Congealer.from_preset("mnist", reference=images[0])
    >>> congealer.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> congealer.fit(images, batch_size=64, epochs=10)
    >>> result = congealer.align(images)  # aligned images, pixel transforms
    """

    _SUPPORTED_OBJECTIVES = OBJECTIVES

    def __init__(
        self,
        aligner,
        autoencoder,
        reference,
        objective="D+C",
        lam=1.0,
        ink_weight=1.0,
        distortion_blur=0.0,
        scale_weight=0.0,
        distortion_features="pixels",
        distortion_target="reference",
        distortion_window=0.0,
        centring_weight=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value, allowed in (
            ("objective", objective, self._SUPPORTED_OBJECTIVES),
            ("distortion_features", distortion_features, DISTORTION_FEATURES),
            ("distortion_target", distortion_target, DISTORTION_TARGETS),
        ):
            if value not in allowed:
                raise ValueError(f"Unknown {name}={value!r}. Expected one of {allowed}.")
        if "C" in objective and autoencoder is None:
            raise ValueError(f"objective={objective!r} needs an `autoencoder`, received None.")
        reference = np.asarray(reference, dtype="float32")
        if reference.ndim == 2:
            reference = reference[..., None]
        if reference.ndim != 3:
            raise ValueError(
                "Expected `reference` of shape (height, width) or (height, width, "
                f"channels), received shape {reference.shape}."
            )
        if not np.all(np.isfinite(reference)):
            raise ValueError("`reference` contains NaN or infinite values.")
        self.aligner = aligner
        self.autoencoder = autoencoder if "C" in objective else None
        self.objective = objective
        self.lam = float(lam)
        self.ink_weight = float(ink_weight)
        self.distortion_blur = float(distortion_blur)
        self.scale_weight = float(scale_weight)
        self.distortion_features = distortion_features
        self.distortion_target = distortion_target
        self.distortion_window = float(distortion_window)
        self.centring_weight = float(centring_weight)
        self.image_shape = tuple(int(v) for v in reference.shape)
        self.transform = aligner.transform
        if self.autoencoder is not None:
            self.autoencoder.loss_weight = self.lam
        self.sampler = BilinearSampler(self.transform, name="sampler")
        self.reference = self.add_weight(
            shape=self.image_shape,
            initializer=keras.initializers.Constant(reference),
            trainable=False,
            name="reference",
        )
        self.distortion_tracker = keras.metrics.Mean(name="distortion")
        self.complexity_tracker = keras.metrics.Mean(name="complexity")
        self.ink_tracker = keras.metrics.Mean(name="ink")

    @classmethod
    def from_preset(
        cls,
        preset,
        reference,
        transform=None,
        fusion="additive",
        code_size=None,
        gamma=1.0,
        k=1,
        precision="float32",
        **kwargs,
    ):
        """Builds the Table-1 architecture `preset` ("mnist" or "lfw").

        `reference` sets the image shape. `transform`: defaults to the
        preset's (`CongealSettings.for_preset(preset).transform`: `"affine"`
        for `"mnist"`, `"similarity"` for `"lfw"`), the transform the command
        line trains. `precision`: `"float32"` or
        `"mixed_bfloat16"` (the aligner's convolutions and dense layers and
        the auto-encoder compute in bfloat16 with float32 variables; the
        sampling geometry, the parameter updates and every loss stay in
        float32). Other keyword arguments go to the constructor
        (`objective`, `lam`, `ink_weight`).
        """
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision={precision!r}. Expected one of {PRECISIONS}.")
        config = get_preset(preset)
        if transform is None:
            transform = CongealSettings.for_preset(preset).transform
        aligner = DeSTNet(transform=transform, fusion=fusion, name="aligner", dtype=precision,
                          **config["aligner"])
        ae_config = config["autoencoder"]
        if code_size is not None:
            ae_config["code_size"] = code_size
        autoencoder = PenalisedAutoencoder(gamma=gamma, k=k, name="autoencoder",
                                           dtype=precision, **ae_config)
        return cls(aligner, autoencoder, reference, dtype="float32", **kwargs)

    def build(self, input_shape):
        self._check_images_shape(input_shape)
        # Loading a `.keras` file builds the sub-layers from their own configs
        # first; building them twice would add their weights twice.
        if not self.aligner.built:
            self.aligner.build(input_shape)
        if not self.sampler.built:
            self.sampler.build((input_shape, (None, geometry.num_params(self.transform))))
        if self.autoencoder is not None and not self.autoencoder.built:
            self.autoencoder.build(input_shape)
        self.built = True

    def build_from_config(self, config):
        self.build(config["input_shape"])

    def _check_images_shape(self, shape):
        if len(shape) != 4 or tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"Expected images of shape (batch, {', '.join(map(str, self.image_shape))}) "
                f"like the reference, received shape {tuple(shape)}."
            )

    def call(self, images):
        self._check_images_shape(images.shape)
        params = self.aligner(images)
        aligned = self.sampler([images, params])
        distortion = self._distortion(aligned)
        ink_log_ratio = ops.log(
            (ops.sum(aligned, axis=(1, 2, 3)) + _EPS) / (ops.sum(images, axis=(1, 2, 3)) + _EPS)
        )
        if "D" in self.objective:
            self.add_loss(ops.mean(distortion))
        if self.ink_weight:
            self.add_loss(self.ink_weight * ops.mean(ops.square(ink_log_ratio)))
        if self.scale_weight:
            log_area = geometry.log_area_change(
                geometry.params_to_matrix(params, self.transform)
            )
            self.add_loss(self.scale_weight * ops.square(ops.mean(log_area)))
        if self.centring_weight:
            self.add_loss(self.centring_weight * ops.sum(ops.square(ops.mean(params, axis=0))))
        if self.autoencoder is not None:
            terms = self.autoencoder(aligned)  # adds lam * C itself
            complexity = terms["reconstruction_error"] + terms["penalty"]
        else:
            complexity = ops.zeros_like(distortion)
        return {
            "aligned": aligned,
            "params": params,
            "distortion": distortion,
            "complexity": complexity,
            "ink_log_ratio": ink_log_ratio,
        }

    def _distortion(self, aligned):
        """Per-image distortion `D_i` (B,): the mean distance of the aligned
        image's features to the target, weighted by the window."""
        features = self._features(aligned)
        if self.distortion_target == "reference":
            target = self._features(ops.cast(self.reference, aligned.dtype)[None])
        else:
            target = ops.mean(features, axis=0, keepdims=True)
        difference = features - target
        if self.distortion_features == "pixels":
            difference = ops.abs(difference)
        else:
            difference = ops.square(difference)
        if self.distortion_window:
            difference = difference * ops.cast(self._window(), difference.dtype)
        return ops.mean(difference, axis=(1, 2, 3))

    def _features(self, images):
        """What `D` compares: the (blurred) pixels, or local-contrast
        features at three scales (`LOCAL_CONTRAST_SCALES`, fractions of the
        image width)."""
        if self.distortion_features == "pixels":
            return filters.gaussian_blur(images, self.distortion_blur)
        width = self.image_shape[1]
        window = LOCAL_CONTRAST_WINDOW * width
        return ops.concatenate(
            [filters.local_contrast(images, scale * width, window)
             for scale in LOCAL_CONTRAST_SCALES],
            axis=-1,
        )

    def _window(self):
        """(1, H, W, 1) Gaussian weights centred on the frame, mean 1, sigma
        `distortion_window` times the image's side."""
        height, width = self.image_shape[:2]
        y, x = np.mgrid[0:height, 0:width].astype("float64")
        radius2 = (((x - (width - 1) / 2) / width) ** 2
                   + ((y - (height - 1) / 2) / height) ** 2)
        weights = np.exp(-0.5 * radius2 / self.distortion_window**2)
        return (weights / weights.mean()).astype("float32")[None, :, :, None]

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.distortion_tracker.update_state(y_pred["distortion"])
        self.complexity_tracker.update_state(y_pred["complexity"])
        self.ink_tracker.update_state(ops.exp(y_pred["ink_log_ratio"]))
        return super().compute_metrics(x, y, y_pred, sample_weight)

    def pixel_transforms(self, params, input_size=None, output_size=None):
        """Pixel `src_from_dst` matrices (float64, (B, 3, 3)) for parameters.

        Matrix `i` maps a pixel `(x, y, 1)` of aligned image `i` to the pixel of
        input image `i` it was sampled from (divide by the third component).
        `input_size`/`output_size` default to the training size; any other size
        (e.g. full-resolution originals) gives the same warp at that size.
        """
        size = self.image_shape[:2]
        matrices = self._pixel_matrices(params, input_size or size, output_size or size)
        return ops.convert_to_numpy(matrices).astype("float64")

    def _pixel_matrices(self, params, input_size, output_size):
        """float32 tensor (B, 3, 3): the pixel `src_from_dst` matrices."""
        delta = geometry.params_to_delta(ops.cast(params, "float32"), self.transform)
        return geometry.delta_to_pixel_matrix(delta, input_size, output_size)

    def align(self, images, batch_size=ALIGN_BATCH_SIZE, verbose=0):
        """Aligns images with the trained aligner (no re-optimisation).

        Args:
            images: array (N, H, W, C) (or (N, H, W) for one channel) of the
                training shape: floats in [0, 1], or uint8 (0..255) or uint16
                (0..65535) images, sent to the device as they are (a quarter
                of the bytes of floats for uint8) and scaled to [0, 1] there.
            batch_size: int. Images per forward pass.
            verbose: int. 1 shows a progress bar.

        Returns:
            A dict of NumPy arrays: `"aligned"` (N, H, W, C) float32 and
            `"transforms"` (N, 3, 3) float64, pixel `src_from_dst` matrices
            (see `pixel_transforms`).
        """
        images = np.asarray(images)
        if images.ndim == 3 and self.image_shape[-1] == 1:
            images = images[..., None]
        self._check_images_shape((None,) + images.shape[1:] if images.ndim == 4 else images.shape)
        if len(images) == 0:
            raise ValueError("`images` is empty: expected at least one image.")
        value_range_of(images.dtype)  # raises for other dtypes
        floats = images.dtype.kind == "f"
        aligned, transforms = [], []
        progress = keras.utils.Progbar(len(images), unit_name="image") if verbose else None
        align_batch = self._align_function()
        pending = None  # the previous batch's results, still on the device
        for start in range(0, len(images), batch_size):
            batch = images[start:start + batch_size]
            if floats:
                batch = batch.astype("float32", copy=False)
                if not np.all(np.isfinite(batch)):
                    raise ValueError(
                        f"`images` contains NaN or infinite values (batch at {start})."
                    )
            count = len(batch)
            if count < batch_size and start:  # the shape the function was compiled for
                batch = np.concatenate([batch, np.zeros((batch_size - count, *batch.shape[1:]),
                                                        batch.dtype)])
            # Dispatched before the previous results are copied to the host,
            # so that the device computes while the host copies (JAX).
            out = (align_batch(batch), count)
            if pending is not None:
                self._collect(pending, aligned, transforms, progress)
            pending = out
        self._collect(pending, aligned, transforms, progress)
        return {"aligned": np.concatenate(aligned), "transforms": np.concatenate(transforms)}

    @staticmethod
    def _collect(pending, aligned, transforms, progress):
        (batch_aligned, matrices), count = pending
        aligned.append(ops.convert_to_numpy(batch_aligned)[:count])
        transforms.append(ops.convert_to_numpy(matrices)[:count].astype("float64"))
        if progress is not None:
            progress.add(count)

    def _align_batch(self, batch):
        """Aligned images and float32 pixel `src_from_dst` matrices of a batch."""
        batch = _unit_floats(ops.convert_to_tensor(batch))
        return self._warp_with(batch, self.aligner(batch))

    def _warp_with(self, batch, params):
        size = self.image_shape[:2]
        return self.sampler([batch, params]), self._pixel_matrices(params, size, size)

    def _align_function(self):
        """`_align_batch` compiled for the backend (jit on JAX, a
        `tf.function` on TensorFlow); made once, it reads the current
        weights at every call."""
        function = getattr(self, "_compiled_align", None)
        if function is not None:
            return function
        backend = keras.backend.backend()
        if backend == "jax":
            import jax

            aligner = self.aligner

            def pure(trainable, non_trainable, batch):
                # The aligner's weights as arguments: the compiled function
                # does not freeze them.
                batch = _unit_floats(batch)
                params, _ = aligner.stateless_call(trainable, non_trainable, batch)
                return self._warp_with(batch, params)

            jitted = jax.jit(pure)

            def function(batch):
                return jitted([v.value for v in aligner.trainable_variables],
                              [v.value for v in aligner.non_trainable_variables], batch)
        elif backend == "tensorflow":
            import tensorflow as tf

            function = tf.function(self._align_batch, reduce_retracing=True)
        else:
            function = self._align_batch
        self._compiled_align = function
        return function

    def get_config(self):
        config = {
            "aligner": keras.saving.serialize_keras_object(self.aligner),
            "autoencoder": (
                keras.saving.serialize_keras_object(self.autoencoder)
                if self.autoencoder is not None else None
            ),
            # The reference's values are saved with the weights; the config only
            # needs its shape to rebuild the variable.
            "reference_shape": list(self.image_shape),
            "objective": self.objective,
            "lam": self.lam,
            "ink_weight": self.ink_weight,
            "distortion_blur": self.distortion_blur,
            "scale_weight": self.scale_weight,
            "distortion_features": self.distortion_features,
            "distortion_target": self.distortion_target,
            "distortion_window": self.distortion_window,
            "centring_weight": self.centring_weight,
        }
        return {**super().get_config(), **config}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        aligner = keras.saving.deserialize_keras_object(config.pop("aligner"))
        autoencoder = config.pop("autoencoder")
        if autoencoder is not None:
            autoencoder = keras.saving.deserialize_keras_object(autoencoder)
        reference = np.zeros(config.pop("reference_shape"), "float32")
        return cls(aligner, autoencoder, reference, **config)


def _unit_floats(batch):
    """A batch tensor as float32 in [0, 1]: integer images (uint8, uint16)
    divided by their white value on the device, floats cast."""
    dtype = keras.backend.standardize_dtype(batch.dtype)
    if dtype.startswith("float"):
        return ops.cast(batch, "float32")
    return ops.cast(batch, "float32") / value_range_of(dtype)
