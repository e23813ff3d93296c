"""The paper's LFW protocol (Sec. 3.5, Figs. 9-10, Table 2) on four subjects.

For each subject and initialisation, the initial box (the Viola-Jones box of
the LFW frame, enlarged by the initialisation fraction in width and height)
is cropped from every 150x150 frame and resized to `--size` pixels with ONE
bilinear warp by the pixel matrix `B` (`crop_matrix`); every method then
aligns the same crops:

* `input`: no alignment (the initialisation itself);
* `oracle-similarity`: each annotated face's three landmarks fitted to their
  mean shape by a similarity (it uses the landmarks: the floor of the measure
  for similarity warps, not a method);
* `keras_congeal`: `fit_congealer` with the face defaults,
  `CongealSettings.for_preset("lfw")` (`--epochs`/`--min-steps` change the
  optimisation budget, `--setting KEY=VALUE` any other setting; all
  recorded), its landmark-error trajectory logged during training;
* `rasl`, `rasl-similarity`, `rasl-affine`: RASL (`benchmarks.baselines.run_rasl`,
  Euclidean by default as its README says) on the greyscale crops (the
  `rasl` package aligns one-channel images); its transforms then warp the
  RGB crops with the package's bilinear sampler, so every method's aligned
  images come from the same sampler.

Measures per (subject, init, method):

* APSNR (Eq. 9) of the aligned RGB crops, MSE averaged over the channels
  (`keras_congeal.metrics.ImageStats`);
* the median content scale (`keras_congeal.metrics.content_scale`: < 1 the
  content shrank, i.e. zoom-out; > 1 zoom-in), which APSNR alone hides;
* the landmark error of Table 2: the two outer eye corners (`canthus_rr`,
  `canthus_ll`) and the nose tip of each annotated frame are mapped into the
  aligned crop by the inverse of `F_i = B @ T_i` (both pixel `src_from_dst`);
  each landmark's spread is the mean distance of its aligned positions to
  their mean; the error is the spread averaged over the three landmarks,
  divided by the mean eye-to-eye distance in the aligned frame, in percent.

Geometry (the convention of `keras_congeal.ops.geometry`: `x` = column,
`y` = row, pixel centres at integers). A `W`-pixel frame covers
`[-0.5, W - 0.5]`; the Viola-Jones box is the centred square of side
`W / 2.2` (LFW's frames are the detected box enlarged 2.2 times), enlarged
to `s = (1 + init) W / 2.2`. The crop's pixel *edges* meet the box's edges:
`B = [[a, 0, c - a (n - 1) / 2], [0, a, c - a (n - 1) / 2], [0, 0, 1]]` with
`a = s / n`, `c = (W - 1) / 2`, `n = --size`. The landmarks are given in the
original 250x250 frame and multiplied by 0.6 for the 150x150 frames, as the
data's README says.

Results go to `<output-dir>/<name>.json` after every finished entry (atomic;
`--resume` skips finished entries), the mean images to `<name>_means.npz`
(uint8), one panel per initialisation to `<name>_init<init>.png` (like
Figs. 9-10: the mean frame with the box in red, then each method's mean
aligned crop) and the tables to `<name>_tables.md`.

Usage:

    # Everything on the paper's three initialisations (RASL takes minutes):
    python -m benchmarks.lfw --inits 0 0.15 0.30 --size 64

    # A CPU budget: fewer epochs, but at least 40 steps for the small subjects.
    python -m benchmarks.lfw --epochs 4 --min-steps 40 --resume

    # Other keras_congeal settings, in their own files:
    python -m benchmarks.lfw --setting transform=similarity --setting learning_rate=1e-4 \\
        --methods input keras_congeal --name lfw_similarity

    # Two subjects, the first 50 images of each, no RASL:
    python -m benchmarks.lfw --subjects Serena_Williams Tony_Blair --limit 50 \\
        --methods input keras_congeal --name lfw_small

    # Rebuild the tables and the figures from the JSON:
    python -m benchmarks.lfw --report-only
"""

import argparse
import csv
import math
import os
import time
from pathlib import Path

import numpy as np

from benchmarks import common, protocol

__all__ = [
    "SUBJECTS",
    "METHODS",
    "LANDMARKS",
    "resolve_lfw",
    "box_side",
    "box_corners",
    "crop_matrix",
    "read_landmarks",
    "load_subject",
    "crop_frames",
    "map_points",
    "aligned_landmarks",
    "landmark_error",
    "main",
]

SCHEMA = "keras_congeal.lfw/1"
# The paper's four subjects, in Table 2's order S1..S4.
SUBJECTS = ("George_W_Bush", "Jennifer_Capriati", "Serena_Williams", "Tony_Blair")
METHODS = ("input", "oracle-similarity", "keras_congeal", "rasl", "rasl-similarity", "rasl-affine")
DEFAULT_METHODS = ("input", "oracle-similarity", "keras_congeal", "rasl")
LABELS = {
    "input": "input",
    "oracle-similarity": "similarity oracle",
    "keras_congeal": "keras_congeal",
    "rasl": "RASL eucl.",
    "rasl-similarity": "RASL sim.",
    "rasl-affine": "RASL affine",
}
# LFW frames are the Viola-Jones box enlarged 2.2 times in each dimension.
VIOLA_JONES_ENLARGEMENT = 2.2
# landmarks.tsv holds ORIGINAL 250x250 coordinates; the JPEGs are 150x150.
LANDMARK_SCALE = 0.6
# The paper's three landmarks: outer eye corners (subject's right, left), nose tip.
LANDMARKS = ("canthus_rr", "canthus_ll", "nose")
EYES = (0, 1)
# The paper's Table 2 (landmark error, %), for the report.
PAPER_TABLE2 = {
    (0.0, "RASL"): (2.88, 2.45, 3.32, 3.24),
    (0.0, "DC"): (3.97, 3.48, 3.48, 3.27),
    (0.0, "Proposed"): (2.67, 1.86, 2.24, 2.39),
    (0.15, "RASL"): (3.24, 6.40, 5.02, 3.65),
    (0.15, "Proposed"): (3.84, 2.12, 4.34, 2.04),
    (0.3, "RASL"): (6.29, 6.77, 7.08, 6.87),
    (0.3, "Proposed"): (4.27, 1.92, 3.69, 2.55),
}
CROP_BATCH = 64
# Landmark-error measures of a keras_congeal run's trajectory, about.
TRAJECTORY_POINTS = 12


def entry_key(subject, init, method):
    return f"{subject}/init{init:g}/{method}"


# === Data and geometry ===


def resolve_lfw(path=None):
    """The `lfw4` folder: `path`, else `$KERAS_CONGEAL_DATA/lfw4`, else
    `../shared/data/lfw4` beside the repository. Raises `FileNotFoundError`."""
    candidates = []
    if path is not None:
        candidates.append(Path(path))
    else:
        if os.environ.get("KERAS_CONGEAL_DATA"):
            candidates.append(Path(os.environ["KERAS_CONGEAL_DATA"]) / "lfw4")
        candidates.append(common.REPO.parent / "shared" / "data" / "lfw4")
    for candidate in candidates:
        if (candidate / "landmarks.tsv").is_file():
            return candidate
    raise FileNotFoundError(
        f"LFW data not found (looked for landmarks.tsv in {[str(c) for c in candidates]}); "
        "pass --data or set KERAS_CONGEAL_DATA to the folder holding lfw4/"
    )


def box_side(frame_size, init):
    """Side (pixels) of the initial box: the Viola-Jones box `frame / 2.2`,
    enlarged by `init` (0.15 = 15%) in width and height."""
    return frame_size / VIOLA_JONES_ENLARGEMENT * (1.0 + init)


def box_corners(frame_size, init):
    """`(x0, y0, x1, y1)`: the box's outer edges in the frame's pixel coordinates
    (the frame itself spans `[-0.5, frame - 0.5]`)."""
    centre = (frame_size - 1) / 2.0
    half = box_side(frame_size, init) / 2.0
    return (centre - half, centre - half, centre + half, centre + half)


def crop_matrix(frame_size, crop_size, init):
    """`B` (3, 3) float64: pixel `src_from_dst`, crop pixel -> frame pixel.

    The crop's pixel edges meet the box's edges: crop point `(-0.5, -0.5)`
    maps to the box's top-left corner, `(n - 0.5, n - 0.5)` to its
    bottom-right one, and crop pixel centres sample the box at `side / n`
    spacing.

    Args:
        frame_size: int. Side of the square frame (150 for these JPEGs).
        crop_size: int. Side `n` of the square crop.
        init: float. Box enlargement (0, 0.15, 0.30).
    """
    scale = box_side(frame_size, init) / crop_size
    centre = (frame_size - 1) / 2.0
    shift = centre - scale * (crop_size - 1) / 2.0
    return np.array([[scale, 0.0, shift], [0.0, scale, shift], [0.0, 0.0, 1.0]])


def read_landmarks(data_dir):
    """`{filename: (3, 2) float64}`: canthus_rr, canthus_ll and nose tip
    `(x, y)` in the 150x150 frames (the TSV's 250x250 values times 0.6)."""
    out = {}
    with open(Path(data_dir) / "landmarks.tsv", newline="") as f:
        rows = csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t")
        for row in rows:
            points = [[float(row[f"{name}_x"]), float(row[f"{name}_y"])] for name in LANDMARKS]
            out[row["image"]] = np.asarray(points) * LANDMARK_SCALE
    return out


def load_subject(data_dir, subject, limit=None):
    """The subject's frames, uint8 (N, H, W, 3), and their file names (sorted)."""
    from keras_congeal.io import open_images

    with open_images(Path(data_dir) / subject) as source:
        images = np.asarray(source.images)
        names = list(source.filenames)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{subject}: expected RGB frames, received shape {images.shape}")
    if limit is not None:
        images, names = images[:limit], names[:limit]
    return images, names


def crop_frames(frames, matrix, size):
    """Crops and resizes every frame with one bilinear warp by `matrix`
    (`keras_congeal.ops.warp`, zeros outside the frame).

    Args:
        frames: array (N, H, W, C), uint8 or floats in [0, 1].
        matrix: (3, 3) pixel `src_from_dst`, crop -> frame (`crop_matrix`).
        size: int. Side of the square crops.

    Returns:
        float32 array (N, size, size, C) in [0, 1].
    """
    return _warp_images(frames, np.broadcast_to(matrix, (len(frames), 3, 3)), (size, size))


def _warp_images(images, matrices, output_size):
    from keras import ops

    from keras_congeal.ops import warp

    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    out = []
    for start in range(0, len(images), CROP_BATCH):
        batch = ops.convert_to_tensor(images[start : start + CROP_BATCH].astype("float32") / scale)
        m = ops.convert_to_tensor(np.asarray(matrices[start : start + CROP_BATCH], "float32"))
        out.append(ops.convert_to_numpy(warp(batch, m, output_size)))
    return np.concatenate(out).astype("float32")


def map_points(matrix, points):
    """Maps points (N, K, 2) through per-image 3x3 matrices (N, 3, 3), with the
    perspective divide, in float64 (`keras_congeal.metrics.map_points`)."""
    from keras_congeal.metrics import map_points as map_through

    return map_through(matrix, points)


def aligned_landmarks(frame_points, crop_from_frame_src, transforms):
    """Frame landmarks (N, K, 2) -> the aligned crops' pixel frame.

    Args:
        frame_points: (N, K, 2) `(x, y)` in the frame.
        crop_from_frame_src: `B` (3, 3), crop pixel -> frame pixel.
        transforms: `T_i` (N, 3, 3), aligned pixel -> crop pixel.

    Returns:
        (N, K, 2): `F_i^-1 p` with `F_i = B @ T_i` (aligned -> frame).
    """
    from keras_congeal.metrics import aligned_points

    full = np.asarray(crop_from_frame_src, "float64")[None] @ np.asarray(transforms, "float64")
    return aligned_points(frame_points, full)


def landmark_error(points, eyes=EYES):
    """Table 2's landmark error (`keras_congeal.metrics.landmark_error`)."""
    from keras_congeal.metrics import landmark_error as error

    return error(points, eyes)


# === Methods ===


def _identity(n):
    return np.tile(np.eye(3), (n, 1, 1))


def _run_input(crops, args, cell):
    return {"aligned": crops, "transforms": _identity(len(crops)), "extra": {}}


def congeal_settings(args):
    """The face defaults (`CongealSettings.for_preset("lfw")`), with
    `--epochs`, `--min-steps` and `--setting` applied."""
    from keras_congeal.settings import CongealSettings

    settings = CongealSettings.for_preset("lfw")
    if args.epochs is not None:
        settings = settings.replace(epochs=args.epochs)
    if args.min_steps is not None:
        settings = settings.replace(min_steps=args.min_steps)
    return settings.replace(**dict(args.setting))


def _parse_setting(text):
    """`KEY=VALUE` of `--setting`: VALUE read as JSON when it parses, else a string."""
    import dataclasses
    import json

    from keras_congeal.settings import CongealSettings

    key, sep, value = text.partition("=")
    fields = sorted(
        f.name for f in dataclasses.fields(CongealSettings) if f.name not in ("preset", "epochs")
    )
    if not sep or key not in fields:
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE with KEY one of {fields} (epochs: --epochs), received {text!r}"
        )
    try:
        value = json.loads(value)
    except json.JSONDecodeError:
        pass
    return key, value


def _run_congealer(crops, args, cell):
    import keras

    from keras_congeal.callbacks import AlignmentMonitor
    from keras_congeal.training import fit_congealer

    settings = congeal_settings(args)
    epochs = settings.epochs_for(len(crops))
    steps_per_epoch = math.ceil(len(crops) / settings.batch_size)
    # The landmark-error trajectory: about TRAJECTORY_POINTS measures.
    every = max(1, round(epochs / TRAJECTORY_POINTS))
    crop_points = _crop_points(cell)
    monitor = (
        AlignmentMonitor(crops[cell["index"]], every=every, landmarks=crop_points, eyes=EYES)
        if len(cell["index"]) > 1
        else None
    )
    start = time.perf_counter()
    model, history = fit_congealer(
        crops,
        settings,
        verbose=0,
        monitor_size=args.monitor_size,
        callbacks=[monitor] if monitor else [],
    )
    fit_seconds = time.perf_counter() - start
    result = model.align(crops)
    history = {k: [float(v) for v in values] for k, values in history.history.items()}
    trajectory = (
        []
        if monitor is None
        else [
            {
                "step": m["epoch"] * steps_per_epoch,
                **{k: m[k] for k in ("landmark_error", "apsnr", "scale")},
            }
            for m in monitor.history
        ]
    )
    keras.backend.clear_session()
    return {
        "aligned": result["aligned"],
        "transforms": result["transforms"],
        "extra": {
            "settings": settings.to_dict(),
            "epochs": epochs,
            "steps": epochs * steps_per_epoch,
            "fit_seconds": fit_seconds,
            "history": history,
            "trajectory": trajectory,
        },
    }


def _crop_points(cell):
    """The cell's landmarks (M, 3, 2) in crop pixels (`B^-1 p`)."""
    inverse = np.linalg.inv(cell["crop_matrix"])
    return map_points(np.broadcast_to(inverse, (len(cell["points"]), 3, 3)), cell["points"])


def similarity_to_mean(points, iterations=20):
    """Per-image similarities that map each image's landmarks (N, K, 2) onto
    their common mean shape, least squares (Procrustes, the mean refitted
    `iterations` times; its scale and position pinned to the first mean).

    Returns:
        (N, 3, 3) float64: `target_from_image` matrices.
    """
    points = np.asarray(points, "float64")
    mean = points.mean(axis=0)
    for _ in range(iterations):
        matrices = np.stack([_similarity(p, mean) for p in points])
        fitted = np.einsum("nij,nkj->nki", matrices[:, :2, :2], points) + matrices[:, None, :2, 2]
        new = fitted.mean(axis=0)
        # Keep the first mean's centroid and size: only the shape is refitted.
        new = (new - new.mean(0)) * (
            np.linalg.norm(mean - mean.mean(0)) / np.linalg.norm(new - new.mean(0))
        ) + mean.mean(0)
        if np.allclose(new, mean, atol=1e-9):
            break
        mean = new
    return np.stack([_similarity(p, mean) for p in points])


def _similarity(source, target):
    """The similarity (3, 3) minimising `sum |M source_k - target_k|^2`."""
    src = source - source.mean(0)
    dst = target - target.mean(0)
    a = (src * dst).sum() / (src**2).sum()
    b = (src[:, 0] * dst[:, 1] - src[:, 1] * dst[:, 0]).sum() / (src**2).sum()
    linear = np.array([[a, -b], [b, a]])
    shift = target.mean(0) - linear @ source.mean(0)
    return np.array([[a, -b, shift[0]], [b, a, shift[1]], [0.0, 0.0, 1.0]])


def _run_oracle(crops, args, cell):
    """The similarity oracle: each annotated face's three landmarks fitted to
    their mean shape (in crop pixels), i.e. a perfect similarity alignment;
    faces without landmarks stay as they are. The floor of this measure for
    similarity warps."""
    transforms = _identity(len(crops))
    if len(cell["index"]) > 1:
        crop_points = _crop_points(cell)
        # aligned <- crop is the fitted similarity: src_from_dst is its inverse.
        transforms[cell["index"]] = np.linalg.inv(similarity_to_mean(crop_points))
    return {
        "aligned": _warp_images(crops, transforms, crops.shape[1:3]),
        "transforms": transforms,
        "extra": {"note": "uses the landmarks: a floor, not a method"},
    }


def _run_rasl(transform):
    def run(crops, args, cell):
        from benchmarks.baselines import run_rasl

        grey = _greyscale(crops)
        result = run_rasl(
            grey,
            transform=transform,
            data_range=1.0,
            resample="bilinear",
            max_iter=args.rasl_max_iter,
            stop_delta=args.rasl_stop_delta,
        )
        transforms = result["transforms"]
        info = result["info"]
        return {
            "aligned": _warp_images(crops, transforms, crops.shape[1:3]),
            "transforms": transforms,
            "extra": {
                "iterations": result["iterations"],
                "capped": result["iterations"] >= args.rasl_max_iter,
                "rasl_seconds": result["seconds"],
                "guards": info["guards"],
                "num_kept": info["num_kept"],
                "settings": {
                    k: info[k] for k in ("transform", "stop_delta", "max_iter", "min_ink")
                },
                "note": "RASL aligned the greyscale crops (0.299 R + 0.587 G + 0.114 B); its "
                "transforms warp the RGB crops with keras_congeal's bilinear sampler",
            },
        }

    return run


def _greyscale(images):
    return np.tensordot(np.asarray(images, "float64"), [0.299, 0.587, 0.114], axes=([-1], [0]))


RUNNERS = {
    "input": _run_input,
    "oracle-similarity": _run_oracle,
    "keras_congeal": _run_congealer,
    "rasl": _run_rasl("euclidean"),
    "rasl-similarity": _run_rasl("similarity"),
    "rasl-affine": _run_rasl("affine"),
}


# === Protocol ===


def measure(crops, aligned, transforms, matrix, landmarks):
    """APSNR, content scale and landmark error of one method's output.

    `landmarks` is `(index, points)`: the indices of the annotated frames and
    their (M, 3, 2) frame points.
    """
    from keras_congeal.metrics import ImageStats, content_scale

    stats = ImageStats(1.0).update(aligned)
    scales = content_scale(transforms, aligned.shape[1:3])
    index, points = landmarks
    error = (
        landmark_error(aligned_landmarks(points, matrix, transforms[index])) if len(index) else None
    )
    return {
        "apsnr": stats.apsnr(),
        "content_scale_median": float(np.median(scales)),
        "content_scale_p05": float(np.percentile(scales, 5)),
        "content_scale_p95": float(np.percentile(scales, 95)),
        "landmark_error_percent": error["error_percent"] if error else None,
        "landmarks": error,
        "_mean": stats.mean,
    }


# === Report ===


def tables(results, methods):
    """Markdown: every cell, then averages over subjects, then Table 2's layout."""
    inits = sorted({e["init"] for e in results.values()})
    subjects = [s for s in SUBJECTS if any(e["subject"] == s for e in results.values())]
    subjects += sorted({e["subject"] for e in results.values()} - set(subjects))
    rows = []
    for subject in subjects:
        for init in inits:
            for method in methods:
                e = results.get(entry_key(subject, init, method))
                if e is None:
                    continue
                budget = (
                    f"{e['epochs']} ep / {e['steps']} steps"
                    if "epochs" in e
                    else f"{e['iterations']} it" + (" (capped)" if e.get("capped") else "")
                    if "iterations" in e
                    else ""
                )
                trajectory = " ".join(
                    f"{p['step']}:{p['landmark_error']:.1f}" for p in e.get("trajectory", [])
                )
                rows.append(
                    [
                        subject,
                        f"{init:g}",
                        method,
                        e["images"],
                        common.fmt(e["apsnr"]),
                        common.fmt(e["landmark_error_percent"]),
                        common.fmt(e["content_scale_median"], 3),
                        common.fmt(e["seconds"], 1),
                        budget,
                        trajectory,
                    ]
                )
    text = [
        "### Every cell",
        "",
        common.markdown_table(
            [
                "subject",
                "init",
                "method",
                "N",
                "APSNR dB",
                "landmark err. %",
                "scale (median)",
                "seconds",
                "budget",
                "trajectory (step:landmark err. %)",
            ],
            rows,
        ),
    ]

    avg_rows = []
    for init in inits:
        for method in methods:
            entries = [
                e
                for e in results.values()
                if e["method"] == method and abs(e["init"] - init) < 1e-9
            ]
            if not entries:
                continue
            avg_rows.append(
                [
                    f"{init:g}",
                    method,
                    len(entries),
                    common.fmt(float(np.mean([e["apsnr"] for e in entries]))),
                    common.fmt(protocol.mean_of([e["landmark_error_percent"] for e in entries])),
                    common.fmt(float(np.mean([e["content_scale_median"] for e in entries])), 3),
                    common.fmt(float(np.sum([e["seconds"] for e in entries])), 1),
                ]
            )
    text += [
        "",
        "### Averaged over subjects (seconds: summed)",
        "",
        common.markdown_table(
            ["init", "method", "subjects", "APSNR dB", "landmark err. %", "scale", "seconds"],
            avg_rows,
        ),
    ]

    table2 = []
    for init in inits:
        for method in methods:
            cells = [results.get(entry_key(s, init, method)) for s in SUBJECTS]
            if any(c is not None for c in cells):
                table2.append(
                    [f"+{init:.0%}" if init else "VJ", f"{method} (here)"]
                    + [
                        "-" if c is None else common.fmt(c["landmark_error_percent"]) + "%"
                        for c in cells
                    ]
                )
        for name in ("RASL", "DC", "Proposed"):
            paper = PAPER_TABLE2.get((round(init, 2), name))
            if paper:
                table2.append(
                    [f"+{init:.0%}" if init else "VJ", f"{name} (paper)"]
                    + [f"{v:.2f}%" for v in paper]
                )
    text += [
        "",
        "### Table 2 layout: landmark error, here and in the paper",
        "",
        common.markdown_table(
            ["init", "method", "S1 Bush", "S2 Capriati", "S3 Williams", "S4 Blair"], table2
        ),
    ]
    text += [
        "",
        "Landmark error: mean over the 3 landmarks (outer eye corners, nose tip) of "
        "the mean distance to their mean position, over the mean eye-to-eye distance, in "
        "the aligned frame. scale: median content scale (1 = as cropped, < 1 = zoomed "
        "out/shrunk, > 1 = zoomed in).",
    ]
    return "\n".join(text)


def plot_panels(results, images, out_prefix, methods):
    """One PNG per initialisation like Figs. 9-10: rows = subjects; columns =
    the mean frame with the box in red, then each method's mean aligned crop
    with its APSNR and landmark error. Returns the paths written."""
    plt = protocol.pyplot()
    if plt is None:
        return []
    from matplotlib.patches import Rectangle

    paths = []
    inits = sorted({e["init"] for e in results.values()})
    for init in inits:
        subjects = [s for s in SUBJECTS if any(entry_key(s, init, m) in results for m in methods)]
        shown = [m for m in methods if any(entry_key(s, init, m) in results for s in subjects)]
        if not subjects:
            continue
        cols = 1 + len(shown)
        fig, axes = plt.subplots(
            len(subjects),
            cols,
            squeeze=False,
            figsize=(1.45 * cols + 0.2, 1.6 * len(subjects) + 0.5),
        )
        for i, subject in enumerate(subjects):
            ax = axes[i, 0]
            ax.set_xticks([])
            ax.set_yticks([])
            frame = images.get(f"{subject}/frame_mean")
            if frame is not None:
                ax.imshow(frame)
                x0, y0, x1, y1 = box_corners(frame.shape[0], init)
                ax.add_patch(
                    Rectangle(
                        (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=0.8
                    )
                )
            ax.set_ylabel(subject.replace("_", " "), fontsize=6)
            if i == 0:
                ax.set_title("mean frame, init box", fontsize=6)
            for j, method in enumerate(shown):
                ax = axes[i, j + 1]
                ax.set_xticks([])
                ax.set_yticks([])
                key = entry_key(subject, init, method)
                if key not in images:
                    ax.set_axis_off()
                    continue
                ax.imshow(images[key])
                e = results[key]
                label = f"{LABELS.get(method, method)}\n" if i == 0 else ""
                ax.set_title(
                    f"{label}{common.fmt(e['apsnr'], 2)} dB, "
                    f"{common.fmt(e['landmark_error_percent'], 2)}%",
                    fontsize=6,
                    pad=2,
                )
        fig.suptitle(f"LFW, init box +{init:.0%}: means (APSNR, landmark error)", fontsize=7)
        fig.subplots_adjust(wspace=0.05, hspace=0.3, top=0.88, left=0.06, right=0.99, bottom=0.02)
        paths.append(protocol.save_figure(plt, fig, f"{out_prefix}_init{init:g}.png", dpi=110))
    return paths


# === The protocol ===


class LFWProtocol(protocol.Protocol):
    """Cells (subject, init): every method on the same crops of the initial box."""

    module = "benchmarks.lfw"
    schema = SCHEMA
    methods = METHODS
    default_methods = DEFAULT_METHODS
    images_suffix = "_means"
    data_name = "LFW"
    epochs_help = "keras_congeal epochs (default: the lfw preset's)"
    rasl_stop_delta_help = "RASL stopping threshold (default 0.005, the baseline's)"
    measures = {
        "apsnr": "Eq. 9 on the 0..255 scale over the aligned RGB crops, MSE averaged over "
        "pixels and channels (keras_congeal.metrics.ImageStats)",
        "landmark_error_percent": "Table 2: for canthus_rr, canthus_ll and nose (frame "
        "coordinates = landmarks.tsv x 0.6) mapped into the aligned "
        "crop by inv(B @ T_i), the mean distance to their mean, "
        "averaged over the 3 landmarks, / mean eye-to-eye distance",
        "content_scale_median": "median of 1/sqrt|det J| of T_i at the crop centre "
        "(metrics.content_scale): < 1 zoom-out, > 1 zoom-in",
        "crop_matrix": "B, pixel src_from_dst crop -> 150x150 frame (x = column, y = row, "
        "pixel centres at integers); crop edges meet the box edges",
        "seconds": "wall clock of the method on this machine (keras_congeal: fit + align; "
        "rasl: RASL + the final RGB warp)",
    }
    tables = staticmethod(tables)
    plot_panels = staticmethod(plot_panels)

    def add_arguments(self, parser):
        parser.add_argument(
            "--data",
            default=None,
            help="the lfw4 folder (default: $KERAS_CONGEAL_DATA/lfw4, then ../shared/data/lfw4)",
        )
        parser.add_argument(
            "--subjects",
            nargs="+",
            default=list(SUBJECTS),
            help="subject folders (default: the paper's four)",
        )
        parser.add_argument(
            "--inits",
            type=float,
            nargs="+",
            default=[0.0, 0.15, 0.30],
            help="box enlargements (default: 0 0.15 0.30, the paper's)",
        )
        parser.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
        parser.add_argument(
            "--setting",
            type=_parse_setting,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a CongealSettings field for keras_congeal, e.g. "
            "transform=similarity or learning_rate=1e-4 (repeatable; "
            "recorded in the JSON's config)",
        )
        parser.add_argument(
            "--min-steps",
            type=int,
            default=None,
            help="raise a cell's epochs until it trains at least this many "
            "batches (small subjects have 1 batch an epoch; default: the "
            "lfw preset's min_steps)",
        )
        parser.add_argument(
            "--monitor-size",
            type=int,
            default=0,
            help="images of a random sample whose APSNR/scale fit_congealer logs each epoch "
            "into the cell's history (default 0: none; the landmark trajectory is logged "
            "on the annotated crops whatever this is)",
        )
        parser.add_argument(
            "--limit", type=int, default=None, help="first N frames of each subject (default: all)"
        )
        parser.add_argument(
            "--name", default="lfw", help="file name prefix of the outputs (default: lfw)"
        )

    def check_arguments(self, args, parser):
        if args.size < 8:
            parser.error(f"--size must be at least 8, received {args.size}")
        if any(not 0 <= i < 1.2 for i in args.inits):
            parser.error(
                f"--inits must be in [0, 1.2) (the box must fit the frame), received {args.inits}"
            )
        try:
            congeal_settings(args)
        except (ValueError, TypeError) as error:
            parser.error(f"--setting: {error}")
        if args.limit is not None and args.limit < 2:
            parser.error("--limit must be at least 2")
        if "/" in args.name or not args.name.startswith("lfw"):
            parser.error(f"--name must be a file name starting with 'lfw', received {args.name!r}")

    def name(self, args):
        return args.name

    def open_data(self, args):
        data_dir = resolve_lfw(args.data)
        missing = [s for s in args.subjects if not (data_dir / s).is_dir()]
        if missing:
            raise FileNotFoundError(f"no folder for --subjects {missing} in {data_dir}")
        return data_dir

    def config(self, args):
        return {
            "size": args.size,
            "limit": args.limit,
            "congeal_settings": congeal_settings(args).to_dict(),
            "congeal_epochs_overridden": args.epochs is not None,
            "rasl": {
                "stop_delta": args.rasl_stop_delta,
                "max_iter": args.rasl_max_iter,
                "input": "greyscale crops",
                "resample": "bilinear",
                "min_ink": 1.0,
                "blas_threads": 1,
            },
            "landmarks": list(LANDMARKS),
            "landmark_scale": LANDMARK_SCALE,
            "viola_jones_enlargement": VIOLA_JONES_ENLARGEMENT,
        }

    def run_fields(self, args, data_dir):
        return {
            "subjects": args.subjects,
            "inits": args.inits,
            "methods": args.methods,
            "data": common.portable_path(data_dir),
        }

    def cells(self, args, data_dir, images):
        """The (subject, init) cells; each subject's mean frame goes to `images`."""
        landmarks = read_landmarks(data_dir)
        for subject in args.subjects:
            frames, names = load_subject(data_dir, subject, args.limit)
            images[f"{subject}/frame_mean"] = np.clip(
                np.round(frames.astype("float64").mean(axis=0)), 0, 255
            ).astype(np.uint8)
            for init in args.inits:
                yield protocol.Cell(
                    name=f"{subject} init {init:g}",
                    key=lambda method, s=subject, i=init: entry_key(s, i, method),
                    prepare=lambda s=subject, i=init, f=frames, n=names: self._prepare(
                        f, n, landmarks, s, i, args
                    ),
                )

    def _prepare(self, frames, names, landmarks, subject, init, args):
        """`(fields, inputs)` of one cell: the crops of the initial box, and
        the annotated frames' indices and landmarks."""
        matrix = crop_matrix(frames.shape[1], args.size, init)
        crops = crop_frames(frames, matrix, args.size)
        index = np.array([i for i, name in enumerate(names) if name in landmarks], dtype=int)
        points = (
            np.stack([landmarks[names[i]] for i in index])
            if len(index)
            else np.zeros((0, len(LANDMARKS), 2))
        )
        fields = {
            "subject": subject,
            "init": init,
            "images": len(frames),
            "images_with_landmarks": int(len(index)),
            "crop_matrix": matrix,
            "box": box_corners(frames.shape[1], init),
            "frame_size": int(frames.shape[1]),
        }
        return fields, {"crops": crops, "cell": {**fields, "index": index, "points": points}}

    def run_method(self, method, inputs, args):
        return RUNNERS[method](inputs["crops"], args, inputs["cell"])

    def measure(self, inputs, key, output):
        cell = inputs["cell"]
        measures = measure(
            inputs["crops"],
            output["aligned"],
            output["transforms"],
            cell["crop_matrix"],
            (cell["index"], cell["points"]),
        )
        mean = measures.pop("_mean")
        return measures, {key: np.clip(np.round(mean * 255), 0, 255).astype(np.uint8)}

    def describe(self, e):
        return (
            f"{e['subject']:18s} init {e['init']:<4g} {e['method']:15s} APSNR "
            f"{e['apsnr']:6.2f} dB  landmarks {common.fmt(e['landmark_error_percent'])}%  "
            f"scale {e['content_scale_median']:.3f}  {e['seconds']:7.1f} s"
        )


# `main(argv=None) -> int`: the command line.
main = LFWProtocol().main


if __name__ == "__main__":
    raise SystemExit(main())
