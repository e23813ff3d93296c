"""PNG figures of an alignment, drawn with Pillow only (no matplotlib).

* `mean_variance_figure`: the mean and variance images before and after
  alignment, as in the paper's figures (a sharp mean and a dark variance mean
  a good alignment), labelled with the APSNR.
* `samples_figure`: a grid of input images beside the same grid aligned.
* `reference_figure`: one image (the reference the set was aligned to).

Small images are enlarged by pixel repetition (nearest neighbour) so that
28x28 digits are visible. Every PNG is written atomically.

Example:

>>> meter = AlignmentMeter(data_range=255.0)
>>> meter.update(inputs, aligned, transforms)
>>> mean_variance_figure(meter.before, meter.after, "mean_variance.png")
>>> samples_figure(inputs[:16], aligned[:16], "samples.png")
"""

import math

import numpy as np

from keras_congeal.io import atomic_file

__all__ = ["mean_variance_figure", "samples_figure", "reference_figure"]

_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)
_GAP = 2  # pixels between tiles
_MARGIN = 6  # pixels around blocks
_PANEL_SIZE = 168  # mean/variance panels are enlarged to about this many pixels
_TILE_SIZE = 84  # sample tiles are enlarged to about this many pixels


def _pil():
    from PIL import Image, ImageDraw, ImageFont

    return Image, ImageDraw, ImageFont


def _font():
    _, _, image_font = _pil()
    try:
        return image_font.load_default(size=12)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return image_font.load_default()


def _factor(height, width, target):
    """Integer enlargement bringing the larger side near `target` pixels."""
    return max(1, round(target / max(height, width)))


def _to_tile(image, data_range, factor):
    """A (H, W[, C]) image in [0, data_range] -> an RGB Pillow image, enlarged."""
    image_module, _, _ = _pil()
    values = np.asarray(image, dtype="float64")
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim == 3 and values.shape[-1] != 3:
        values = values.mean(axis=-1)
    pixels = np.clip(np.round(values * (255.0 / data_range)), 0, 255).astype(np.uint8)
    tile = image_module.fromarray(pixels).convert("RGB")
    if factor > 1:
        tile = tile.resize((tile.width * factor, tile.height * factor),
                           image_module.Resampling.NEAREST)
    return tile


def _text_height(font):
    left, top, right, bottom = font.getbbox("Ag")
    return bottom + 2


def _save(canvas, path):
    with atomic_file(path) as tmp:
        canvas.save(tmp, format="PNG")
    return path


def _grid(images, data_range, factor, columns):
    """Tiles `images` into one RGB image, `columns` per row."""
    image_module, _, _ = _pil()
    tiles = [_to_tile(image, data_range, factor) for image in images]
    rows = math.ceil(len(tiles) / columns)
    width, height = tiles[0].size
    grid = image_module.new(
        "RGB", (columns * width + (columns - 1) * _GAP, rows * height + (rows - 1) * _GAP),
        _BACKGROUND,
    )
    for i, tile in enumerate(tiles):
        row, column = divmod(i, columns)
        grid.paste(tile, (column * (width + _GAP), row * (height + _GAP)))
    return grid


def _labelled_blocks(blocks, title=None):
    """Places `(label, image)` blocks side by side, each under its label."""
    image_module, image_draw, _ = _pil()
    font = _font()
    line = _text_height(font)
    top = _MARGIN + (line + _MARGIN if title else 0)
    width = _MARGIN + sum(block.width + _MARGIN for _, block in blocks)
    height = top + line + max(block.height for _, block in blocks) + _MARGIN
    if title:
        width = max(width, int(font.getlength(title)) + 2 * _MARGIN)
    canvas = image_module.new("RGB", (width, height), _BACKGROUND)
    draw = image_draw.Draw(canvas)
    if title:
        draw.text((_MARGIN, _MARGIN), title, fill=_TEXT, font=font)
    x = _MARGIN
    for label, block in blocks:
        draw.text((x, top), label, fill=_TEXT, font=font)
        canvas.paste(block, (x, top + line))
        x += block.width + _MARGIN
    return canvas


def mean_variance_figure(stats_before, stats_after, path, title=None):
    """Draws the mean and variance images before and after alignment.

    A 2x2 grid: columns "before" and "after" (each headed by its APSNR),
    rows mean and variance. The mean is shown on the data's range (white =
    `data_range`); both variance images share one scale (white = the larger
    of their maxima), so that they compare. Colour images show a colour mean
    and the variance averaged over the channels.

    Args:
        stats_before: `keras_congeal.metrics.ImageStats` of the input images.
        stats_after: `ImageStats` of the aligned images.
        path: str. The PNG to write.
        title: str. An optional line of text above the grid.

    Returns:
        `path`.
    """
    height, width = stats_before.mean.shape[:2]
    factor = _factor(height, width, _PANEL_SIZE)
    variance_top = max(float(stats_before.variance.max()), float(stats_after.variance.max()))
    variance_top = variance_top or 1.0
    columns = []
    for name, stats in (("before", stats_before), ("after", stats_after)):
        mean = _to_tile(stats.mean, stats.data_range, factor)
        variance = np.asarray(stats.variance)
        if variance.ndim == 3:
            variance = variance.mean(axis=-1)
        variance = _to_tile(variance, variance_top, factor)
        columns.append((f"{name}: APSNR {stats.apsnr():.2f} dB", mean, variance))
    image_module, image_draw, _ = _pil()
    font = _font()
    line = _text_height(font)
    label_width = int(max(font.getlength(text) for text in ("mean", "variance"))) + _MARGIN
    panel_w, panel_h = columns[0][1].size
    column_w = max(panel_w, *(int(font.getlength(c[0])) for c in columns))
    top = _MARGIN + (line + _MARGIN if title else 0)
    canvas = image_module.new(
        "RGB",
        (_MARGIN + label_width + 2 * (column_w + _MARGIN), top + line + 2 * (panel_h + _MARGIN)),
        _BACKGROUND,
    )
    draw = image_draw.Draw(canvas)
    if title:
        draw.text((_MARGIN, _MARGIN), title, fill=_TEXT, font=font)
    for row, name in enumerate(("mean", "variance")):
        y = top + line + row * (panel_h + _MARGIN)
        draw.text((_MARGIN, y + panel_h // 2 - line // 2), name, fill=_TEXT, font=font)
    for i, (label, mean, variance) in enumerate(columns):
        x = _MARGIN + label_width + i * (column_w + _MARGIN)
        draw.text((x, top), label, fill=_TEXT, font=font)
        canvas.paste(mean, (x, top + line))
        canvas.paste(variance, (x, top + line + panel_h + _MARGIN))
    return _save(canvas, path)


def samples_figure(inputs, aligned, path, n=16, data_range=None, title=None):
    """Draws sample input images beside their aligned versions.

    Two grids of the first `n` images, "input" on the left and "aligned" on
    the right, each image at the same place in both.

    Args:
        inputs: array (N, H, W[, C]), the input images.
        aligned: array like `inputs`, the aligned images.
        path: str. The PNG to write.
        n: int. Images shown (at most N). Defaults to 16.
        data_range: float. The value of white; defaults from the dtype (255
            for uint8, 1 for floats).
        title: str. An optional line of text above the grids.

    Returns:
        `path`.
    """
    count = min(int(n), len(inputs), len(aligned))
    if count < 1:
        raise ValueError("samples_figure needs at least one image.")
    inputs = np.asarray(inputs[:count])
    aligned = np.asarray(aligned[:count])
    if data_range is None:
        data_range = 255.0 if inputs.dtype == np.uint8 else 1.0
    height, width = inputs.shape[1:3]
    factor = _factor(height, width, _TILE_SIZE)
    columns = math.ceil(math.sqrt(count))
    blocks = [
        ("input", _grid(inputs, data_range, factor, columns)),
        ("aligned", _grid(aligned, data_range, factor, columns)),
    ]
    return _save(_labelled_blocks(blocks, title), path)


def reference_figure(reference, path, data_range=1.0, label="reference"):
    """Draws one image (H, W[, C]), enlarged, under `label`.

    Returns:
        `path`.
    """
    reference = np.asarray(reference)
    factor = _factor(reference.shape[0], reference.shape[1], _PANEL_SIZE)
    block = _to_tile(reference, data_range, factor)
    return _save(_labelled_blocks([(label, block)]), path)
