"""Private TensorFlow/tf2onnx helpers of `keras_congeal.export.onnx`.

Imported only by the exporter (it needs TensorFlow and tf2onnx). It holds:

* `projective_warp`: `keras_congeal.ops.sampling.warp`'s contract written with
  `tf.raw_ops.ImageProjectiveTransformV3`, a single TensorFlow op that the
  handler below turns into one ONNX `GridSample`;
* the tf2onnx handler of `ImageProjectiveTransformV3` (registered when this
  module is imported; `version_16`: GridSample joined ONNX in opset 16,
  `keras_congeal.export.onnx.MIN_OPSET`);
* `gather_warp`: the `keras.ops` sampler's algorithm with dynamic image sizes
  (the gather fallback of `--any-size`).

The `--any-size` graph resizes with `keras_congeal.ops.resize` (plain matrix
products, no special op).

Conventions (see `keras_congeal.ops.geometry`): pixel coordinates, `x` = column,
`y` = row, pixel centres at integers; matrices map output pixels to the input
pixels they sample (`src_from_dst`); points outside the input read zeros, a
point within one pixel of the border blends the border pixel with zero.

`ImageProjectiveTransformV3` takes the 8 first entries of the pixel
`src_from_dst` matrix divided by its last entry (TensorFlow's "output -> input"
transform), and uses the same pixel-centre convention: measured against
`keras_congeal.ops.sampling.warp` it agrees to 1e-7 (affine) and 4e-6
(homography). The ONNX graph emitted for it:

    Pad(transforms, 1) -> Reshape (B, 3, 3) -> MatMul with the homogeneous
    pixel grid (3, Ho*Wo) -> Div by the clamped third row -> pixel to
    [-1, 1] -> Transpose/Reshape (B, Ho, Wo, 2)
    Transpose(images, NCHW) -> GridSample(bilinear, zeros, align_corners=1)
    -> Transpose(NHWC)

The perspective divide is clamped to |w| >= `geometry.PERSPECTIVE_EPSILON`,
keeping its sign, exactly as the Keras sampler does (TensorFlow's kernel does
not clamp; it only differs for points mapped ~100 image sizes away, which read
zeros either way). For a homography the clamp applies to `w / P[2, 2]`, which
is `w` for the usual `P[2, 2]` near 1.
"""

import numpy as np
import tensorflow as tf
from onnx import TensorProto
from tf2onnx import utils
from tf2onnx.graph_builder import GraphBuilder
from tf2onnx.handler import tf_op

from keras_congeal.ops import geometry

__all__ = ["projective_warp", "gather_warp"]


def _to_tf_transforms(src_from_dst):
    """Pixel `src_from_dst` (B, 3, 3) -> TensorFlow's 8 entries with `a22 = 1`."""
    flat = tf.reshape(tf.cast(src_from_dst, tf.float32), (-1, 9))
    return flat[:, :8] / flat[:, 8:9]


def _output_shape(images, output_size):
    if output_size is None:
        return tf.shape(images)[1:3]
    if all(isinstance(v, (int, np.integer)) for v in output_size):
        return tf.constant([int(output_size[0]), int(output_size[1])], tf.int32)
    return tf.cast(tf.stack(list(output_size)), tf.int32)


def projective_warp(images, src_from_dst, output_size=None):
    """`keras_congeal.ops.sampling.warp` as one `ImageProjectiveTransformV3` op.

    Same arguments and convention as `sampling.warp` (no gradient to the
    transform: this is for export only). `output_size` may hold tensors.
    """
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=_to_tf_transforms(src_from_dst),
        output_shape=_output_shape(images, output_size),
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def gather_warp(images, src_from_dst, output_size=None):
    """The `keras.ops` sampler's algorithm with dynamic sizes (gathers).

    `sampling.bilinear_sample` needs static image sizes; this version reads
    them from `tf.shape`, for the gather fallback of `--any-size`.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    channels = images.shape[-1]
    out_hw = _output_shape(images, output_size)
    out_h, out_w = out_hw[0], out_hw[1]
    xs = tf.range(tf.cast(out_w, tf.float32))
    ys = tf.range(tf.cast(out_h, tf.float32))
    gy, gx = tf.meshgrid(ys, xs, indexing="ij")
    x, y = geometry.apply_matrix(tf.cast(src_from_dst, tf.float32), gx, gy)
    x0, y0 = tf.floor(x), tf.floor(y)
    wx1, wy1 = x - x0, y - y0
    wx0, wy0 = 1.0 - wx1, 1.0 - wy1
    w_max = tf.cast(width - 1, tf.float32)
    h_max = tf.cast(height - 1, tf.float32)
    flat = tf.reshape(images, (-1, channels))
    base = tf.reshape(tf.range(batch) * (height * width), (-1, 1, 1))

    def corner(xc, yc, weight):
        inside = (xc >= 0.0) & (xc <= w_max) & (yc >= 0.0) & (yc <= h_max)
        weight = tf.where(inside, weight, tf.zeros_like(weight))
        xi = tf.cast(tf.clip_by_value(xc, 0.0, w_max), tf.int32)
        yi = tf.cast(tf.clip_by_value(yc, 0.0, h_max), tf.int32)
        values = tf.gather(flat, base + yi * width + xi)
        return values * weight[..., None]

    return (
        corner(x0, y0, wx0 * wy0)
        + corner(x0 + 1.0, y0, wx1 * wy0)
        + corner(x0, y0 + 1.0, wx0 * wy1)
        + corner(x0 + 1.0, y0 + 1.0, wx1 * wy1)
    )


# === tf2onnx handler ===


def _const(ctx, name, value, dtype=np.float32):
    return ctx.make_const(utils.make_name(name), np.asarray(value, dtype=dtype)).output[0]


def _static_hw(shape):
    """(H, W) of an NHWC shape when both are known, else None."""
    if shape is None or len(shape) != 4 or shape[1] in (None, -1) or shape[2] in (None, -1):
        return None
    return int(shape[1]), int(shape[2])


@tf_op("ImageProjectiveTransformV3")
class ImageProjectiveTransformV3:
    """`ImageProjectiveTransformV3` (bilinear, constant 0 fill) -> `GridSample`."""

    @classmethod
    def version_16(cls, ctx, node, **kwargs):
        images, transforms, output_shape, fill_value = node.input
        interpolation = node.get_attr_str("interpolation")
        fill_mode = node.get_attr_str("fill_mode")
        utils.make_sure(
            interpolation == "BILINEAR",
            "ImageProjectiveTransformV3 %s: only interpolation BILINEAR is supported, got %s",
            node.name, interpolation,
        )
        utils.make_sure(
            fill_mode == "CONSTANT",
            "ImageProjectiveTransformV3 %s: only fill_mode CONSTANT is supported, got %s",
            node.name, fill_mode,
        )
        fill_node = node.inputs[3]
        utils.make_sure(
            fill_node.is_const() and float(fill_node.get_tensor_value()) == 0.0,
            "ImageProjectiveTransformV3 %s: only fill_value 0 is supported", node.name,
        )
        utils.make_sure(
            ctx.get_dtype(images) == TensorProto.FLOAT,
            "ImageProjectiveTransformV3 %s: only float32 images are supported", node.name,
        )
        gb = GraphBuilder(ctx)
        name = node.name
        out_shapes, out_dtypes = node.output_shapes, node.output_dtypes

        # Matrices (B, 3, 3): the 8 entries, padded with the implicit a22 = 1.
        pads = _const(ctx, "pads", [0, 0, 0, 1], np.int64)
        one = _const(ctx, "one", 1.0)
        padded = ctx.make_node("Pad", [transforms, pads, one], attr={"mode": "constant"})
        matrices = ctx.make_node(
            "Reshape", [padded.output[0], _const(ctx, "shape", [-1, 3, 3], np.int64)]
        )

        # Homogeneous pixel grid of the output, (3, Ho * Wo), rows x, y, 1.
        static_out = None
        if node.inputs[2].is_const():
            static_out = [int(v) for v in np.ravel(node.inputs[2].get_tensor_value(as_list=False))]
        if static_out is not None:
            out_h, out_w = static_out
            ys, xs = np.meshgrid(
                np.arange(out_h, dtype=np.float32), np.arange(out_w, dtype=np.float32),
                indexing="ij",
            )
            grid = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size, np.float32)])
            grid = _const(ctx, "pixel_grid", grid)
            grid_shape = _const(ctx, "grid_shape", [0, out_h, out_w, 2], np.int64)
        else:
            out_hw = ctx.make_node("Cast", [output_shape], attr={"to": TensorProto.INT64})
            out_hw = out_hw.output[0]
            out_hw_f = ctx.make_node("Cast", [output_shape], attr={"to": TensorProto.FLOAT})
            out_hw_f = out_hw_f.output[0]
            zero_f = _const(ctx, "zero", 0.0)
            h_f = gb.make_squeeze({"data": gb.make_slice(
                {"data": out_hw_f, "starts": [0], "ends": [1], "axes": [0]}), "axes": [0]})
            w_f = gb.make_squeeze({"data": gb.make_slice(
                {"data": out_hw_f, "starts": [1], "ends": [2], "axes": [0]}), "axes": [0]})
            xs = ctx.make_node("Range", [zero_f, w_f, one]).output[0]  # (Wo,)
            ys = ctx.make_node("Range", [zero_f, h_f, one]).output[0]  # (Ho,)
            xs = gb.make_unsqueeze({"data": xs, "axes": [0]})  # (1, Wo)
            ys = gb.make_unsqueeze({"data": ys, "axes": [1]})  # (Ho, 1)
            gx = ctx.make_node("Expand", [xs, out_hw]).output[0]  # (Ho, Wo)
            gy = ctx.make_node("Expand", [ys, out_hw]).output[0]
            row = _const(ctx, "row", [1, -1], np.int64)
            gx = ctx.make_node("Reshape", [gx, row]).output[0]
            gy = ctx.make_node("Reshape", [gy, row]).output[0]
            ones = ctx.make_node("Add", [ctx.make_node("Mul", [gx, zero_f]).output[0], one])
            grid = ctx.make_node("Concat", [gx, gy, ones.output[0]], attr={"axis": 0}).output[0]
            grid_shape = ctx.make_node(
                "Concat",
                [_const(ctx, "zero_dim", [0], np.int64), out_hw, _const(ctx, "two", [2], np.int64)],
                attr={"axis": 0},
            ).output[0]

        # Source points (B, 3, Ho * Wo), perspective divide with |w| clamped.
        points = ctx.make_node("MatMul", [matrices.output[0], grid]).output[0]
        xy = gb.make_slice({"data": points, "starts": [0], "ends": [2], "axes": [1]})
        w = gb.make_slice({"data": points, "starts": [2], "ends": [3], "axes": [1]})
        negative = ctx.make_node("Less", [w, _const(ctx, "zero", 0.0)]).output[0]
        sign = ctx.make_node("Where", [negative, _const(ctx, "minus_one", -1.0), one]).output[0]
        magnitude = ctx.make_node(
            "Max", [ctx.make_node("Abs", [w]).output[0],
                    _const(ctx, "eps", geometry.PERSPECTIVE_EPSILON)]
        ).output[0]
        w = ctx.make_node("Mul", [sign, magnitude]).output[0]
        xy = ctx.make_node("Div", [xy, w]).output[0]

        # Pixel -> [-1, 1] with the corner pixel centres at -1 and +1.
        static_in = _static_hw(ctx.get_shape(images))
        if static_in is not None:
            in_h, in_w = static_in
            scale = _const(ctx, "scale", np.array(
                [2.0 / (in_w - 1), 2.0 / (in_h - 1)], np.float32).reshape(1, 2, 1))
        else:
            shape = ctx.make_node("Shape", [images]).output[0]
            wh = ctx.make_node(
                "Gather", [shape, _const(ctx, "wh_index", [2, 1], np.int64)], attr={"axis": 0}
            ).output[0]
            wh = ctx.make_node("Cast", [wh], attr={"to": TensorProto.FLOAT}).output[0]
            extent = ctx.make_node("Sub", [wh, one]).output[0]
            scale = ctx.make_node("Div", [_const(ctx, "two_f", 2.0), extent]).output[0]
            scale = ctx.make_node(
                "Reshape", [scale, _const(ctx, "scale_shape", [1, 2, 1], np.int64)]
            ).output[0]
        uv = ctx.make_node("Sub", [ctx.make_node("Mul", [xy, scale]).output[0], one]).output[0]
        uv = ctx.make_node("Transpose", [uv], attr={"perm": [0, 2, 1]}).output[0]
        uv = ctx.make_node("Reshape", [uv, grid_shape]).output[0]

        nchw = ctx.make_node("Transpose", [images], attr={"perm": [0, 3, 1, 2]}).output[0]
        sampled = ctx.make_node(
            "GridSample", [nchw, uv],
            attr={"align_corners": 1, "mode": "bilinear", "padding_mode": "zeros"},
        ).output[0]
        ctx.remove_node(name)
        ctx.make_node(
            "Transpose", [sampled], attr={"perm": [0, 2, 3, 1]}, name=name,
            outputs=node.output, shapes=out_shapes, dtypes=out_dtypes,
        )
