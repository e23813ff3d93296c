"""Small ONNX models that follow the keras_congeal contract, for tests and benchmarks.

Needs the `onnx` package (`pip install 'keras-congeal-serving[test]'`). The
model translates every image by a fixed number of pixels, so that expected
outputs can be written by hand:

    aligned[i][y, x] = images[i][y + ty, x + tx]   (bilinear, zeros outside)
    transforms[i] = [[1, 0, tx], [0, 1, ty], [0, 0, 1]]   (pixel src_from_dst)

The graph is the exporter's tail: a grid built from the input's own shape,
Transpose -> GridSample(align_corners=1, zeros) -> Transpose, opset 17.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Mapping

import numpy as np

__all__ = [
    "expected_translation",
    "header_only_png",
    "make_translation_model",
    "translation_matrices",
    "translation_metadata",
]


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError as error:
        raise ImportError(
            "building test models needs onnx: pip install 'keras-congeal-serving[test]'"
        ) from error
    return onnx, TensorProto, helper


def translation_metadata(
    height: int, width: int, channels: int, any_size: bool = False
) -> dict[str, str]:
    """The contract's `metadata_props` for a translation model."""
    return {
        "keras_congeal.format_version": "1",
        "keras_congeal.version": "0.1.0",
        "keras_congeal.image_height": str(height),
        "keras_congeal.image_width": str(width),
        "keras_congeal.channels": str(channels),
        "keras_congeal.transform": "translation",
        "keras_congeal.value_range": "0,1",
        "keras_congeal.any_size": "true" if any_size else "false",
        "keras_congeal.input_name": "images",
    }


def make_translation_model(
    path: str | os.PathLike,
    height: int = 8,
    width: int = 8,
    channels: int = 1,
    shift: tuple[float, float] = (1.0, 0.0),
    any_size: bool = False,
    batch: int | None = None,
    metadata: Mapping[str, str | None] | None = None,
) -> str:
    """Writes a model that samples each image at `(x + tx, y + ty)`.

    Args:
        path: where to write the `.onnx` file.
        height, width, channels: int. The training size in the metadata and,
            unless `any_size`, the static input shape.
        shift: `(tx, ty)` in pixels (x = column, y = row).
        any_size: bool. Dynamic height and width (metadata `any_size=true`).
        batch: optional int. A fixed batch size (the exporter's `--batch N`);
            defaults to a dynamic batch.
        metadata: optional overrides of `translation_metadata(...)`; a value of
            None removes the key.

    Returns:
        The path, as a string.
    """
    onnx, TensorProto, helper = _onnx()
    tx, ty = (float(v) for v in shift)

    def const(name, values, dtype=np.float32):
        array = np.asarray(values, dtype=dtype)
        return helper.make_node(
            "Constant", [], [name], value=onnx.numpy_helper.from_array(array, name)
        )

    nodes = [
        const("zero", 0.0),
        const("one", 1.0),
        const("two", 2.0),
        const("tx", tx),
        const("ty", ty),
        const("i1", [1], np.int64),
        const("i3", [3], np.int64),
        const("i0", [0], np.int64),
        const("tail33", [3, 3], np.int64),
        const("transform", [[[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]]]),
        const("shape_x", [1, 1, -1, 1], np.int64),
        const("shape_y", [1, -1, 1, 1], np.int64),
        helper.make_node("Shape", ["images"], ["shape"]),
        helper.make_node("Gather", ["shape", "h_index"], ["h"], axis=0),
        helper.make_node("Gather", ["shape", "w_index"], ["w"], axis=0),
        helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),
        helper.make_node("Cast", ["w"], ["wf"], to=TensorProto.FLOAT),
        # Pixel x + tx -> normalised (align_corners=1): 2 * (x + tx) / (W - 1) - 1.
        helper.make_node("Range", ["zero", "wf", "one"], ["xs"]),
        helper.make_node("Range", ["zero", "hf", "one"], ["ys"]),
        helper.make_node("Add", ["xs", "tx"], ["xs_src"]),
        helper.make_node("Add", ["ys", "ty"], ["ys_src"]),
        helper.make_node("Sub", ["wf", "one"], ["wm1"]),
        helper.make_node("Sub", ["hf", "one"], ["hm1"]),
        helper.make_node("Div", ["two", "wm1"], ["sx"]),
        helper.make_node("Div", ["two", "hm1"], ["sy"]),
        helper.make_node("Mul", ["xs_src", "sx"], ["gx0"]),
        helper.make_node("Mul", ["ys_src", "sy"], ["gy0"]),
        helper.make_node("Sub", ["gx0", "one"], ["gx"]),
        helper.make_node("Sub", ["gy0", "one"], ["gy"]),
        helper.make_node("Reshape", ["gx", "shape_x"], ["gx4"]),
        helper.make_node("Reshape", ["gy", "shape_y"], ["gy4"]),
        helper.make_node("Slice", ["shape", "i0", "i3"], ["bhw"]),
        helper.make_node("Concat", ["bhw", "i1"], ["bhw1"], axis=0),
        helper.make_node("Expand", ["gx4", "bhw1"], ["gxe"]),
        helper.make_node("Expand", ["gy4", "bhw1"], ["gye"]),
        helper.make_node("Concat", ["gxe", "gye"], ["grid"], axis=3),
        helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node(
            "GridSample",
            ["nchw", "grid"],
            ["warped"],
            align_corners=1,
            mode="bilinear",
            padding_mode="zeros",
        ),
        helper.make_node("Transpose", ["warped"], ["aligned"], perm=[0, 2, 3, 1]),
        helper.make_node("Slice", ["shape", "i0", "i1"], ["b"]),
        helper.make_node("Concat", ["b", "tail33"], ["b33"], axis=0),
        helper.make_node("Expand", ["transform", "b33"], ["transforms"]),
    ]
    nodes[0:0] = [const("h_index", 1, np.int64), const("w_index", 2, np.int64)]
    dims = ["height", "width"] if any_size else [height, width]
    batch_dim = "batch" if batch is None else int(batch)
    graph = helper.make_graph(
        nodes,
        "keras_congeal_translation",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch_dim, *dims, channels])],
        [
            helper.make_tensor_value_info(
                "aligned", TensorProto.FLOAT, [batch_dim, *dims, channels]
            ),
            helper.make_tensor_value_info("transforms", TensorProto.FLOAT, [batch_dim, 3, 3]),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17)],
        producer_name="keras_congeal_serving.testing",
    )
    # IR 8 is what opset 17 shipped with; onnxruntime >= 1.17 reads it.
    model.ir_version = 8
    props = translation_metadata(height, width, channels, any_size)
    for key, value in (metadata or {}).items():
        if value is None:
            props.pop(key, None)
        else:
            props[key] = value
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    path = os.fspath(path)
    onnx.save(model, path)
    return path


def expected_translation(images: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """What a translation model returns for an integer `shift = (tx, ty)`.

    `images` is `(N, H, W)` or `(N, H, W, C)`; pixels sampled outside are 0.
    """
    tx, ty = (int(v) for v in shift)
    if (tx, ty) != tuple(shift):
        raise ValueError("expected_translation handles integer shifts only")
    images = np.asarray(images)
    expected = np.zeros_like(images)
    height, width = images.shape[1:3]
    ys = slice(max(0, -ty), min(height, height - ty))
    xs = slice(max(0, -tx), min(width, width - tx))
    src_ys = slice(ys.start + ty, ys.stop + ty)
    src_xs = slice(xs.start + tx, xs.stop + tx)
    expected[:, ys, xs] = images[:, src_ys, src_xs]
    return expected


def translation_matrices(shift: tuple[float, float], count: int) -> np.ndarray:
    """The `transforms` a translation model returns: `(count, 3, 3)` float64."""
    tx, ty = (float(v) for v in shift)
    matrix = np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])
    return np.tile(matrix, (count, 1, 1))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def header_only_png(width: int, height: int) -> bytes:
    """A tiny 8-bit greyscale PNG whose header claims `width` x `height`.

    It has no pixel data: opening it reads the header, decoding it fails. A
    hostile input for limits that must act on headers (a decompression bomb
    when the size is large).
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b""))
        + _png_chunk(b"IEND", b"")
    )
