"""The record of a run in its output directory and on the terminal: the
figures, `report.json` (and other JSON files), and the end-of-run summary."""

import datetime
import json
import math
import os

import keras
import numpy as np

import keras_congeal
from keras_congeal.figures import mean_variance_figure, reference_figure, samples_figure

__all__ = ["report_header", "summary_lines", "write_figures", "write_json", "write_report"]

# Images shown in samples.png.
SAMPLES = 16


def write_figures(directory, inputs, meter, reference, reference_label):
    """Writes mean_variance.png, samples.png and reference.png."""
    h, w, _ = inputs.image_shape
    mean_variance_figure(
        meter.before, meter.after, os.path.join(directory, "mean_variance.png"),
        title=f"{inputs.count} images, {h}x{w}",
    )
    aligned = np.load(os.path.join(directory, "aligned.npy"), mmap_mode="r")
    samples_figure(
        np.asarray(inputs.images[:SAMPLES]), np.asarray(aligned[:SAMPLES]),
        os.path.join(directory, "samples.png"), n=SAMPLES, data_range=inputs.data_range,
    )
    del aligned
    reference_figure(reference, os.path.join(directory, "reference.png"), data_range=1.0,
                     label=reference_label)


def _finite(value):
    """JSON cannot hold inf/NaN: they become None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path, value):
    """Writes `value` as indented JSON (inf/NaN as null)."""
    with open(path, "w") as f:
        json.dump(_finite(value), f, indent=2, allow_nan=False)
        f.write("\n")


def report_header(command):
    """The report's first keys: what wrote it, where and when."""
    return {
        "command": command,
        "keras_congeal_version": keras_congeal.__version__,
        "keras_version": keras.__version__,
        "backend": keras.backend.backend(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_report(out, report, scratch=()):
    """Lists the files of `out.partial` (but `scratch`) in `report["files"]`,
    with `report.json`, and writes `report` there as `report.json`."""
    files = set(os.listdir(out.partial)) - set(scratch) | {"report.json"}
    report["files"] = sorted(files)
    write_json(out.file("report.json"), report)


def _format_seconds(seconds):
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(seconds, 60)
    return f"{int(minutes)} min {seconds:.0f} s"


def _plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def summary_lines(report, output):
    """The end-of-run summary, one screen: quality, time, where the outputs are."""
    shape = "x".join(map(str, report["image_shape"][:2]))
    kind = "grey" if report["image_shape"][2] == 1 else "RGB"
    oracle = report.get("oracle") or {}
    lines = [f"{report['command']}: {report['images']} {kind} images {shape} "
             f"{report['dtype']} -> {output}"]
    settings = report.get("settings")
    if settings is not None:
        decay = settings.get("learning_rate_schedule") == "cosine"
        lines.append(
            f"  model      {report['preset']} preset, {settings['transform']}, "
            f"{settings['objective']}, {_plural(report['epochs'], 'epoch')}, "
            f"batch {settings['batch_size']}, "
            f"learning rate {settings['learning_rate']:g}{' (cosine to a tenth)' if decay else ''}"
            f", lambda {settings['lam']:g}, "
            f"ink weight {settings['ink_weight']:g}, seed {settings['seed']}"
        )
        if settings.get("distortion_features", "pixels") != "pixels" or \
                settings.get("distortion_target", "reference") != "reference":
            lines.append(
                f"  distortion {settings['distortion_features']} vs "
                f"{settings['distortion_target']}, window {settings['distortion_window']:g}, "
                f"centring weight {settings['centring_weight']:g}"
            )
        index, reference = report.get("reference_index"), report["reference"]
        if index is not None:
            reference = f"image {index} ({reference})"
        lines.append(f"  reference  {reference}: see reference.png; choose another with "
                     "--reference INDEX|IMAGE.png")
        if report.get("reference_warning"):
            lines.append(f"  warning    {report['reference_warning']}")
    else:
        lines.append(f"  model      {report['model']}")

    def db(value):
        return f"{value:.2f} dB" if value is not None and math.isfinite(value) else "inf dB"

    apsnr = f"{db(report['apsnr_before'])} -> {db(report['apsnr_after'])}"
    if oracle:
        apsnr = f"{apsnr:<28} (oracle {db(oracle['apsnr'])}, unperturbed originals " \
                f"{db(oracle['apsnr_originals'])})"
    lines.append(f"  APSNR      {apsnr}")
    ink = f"{report['ink_kept']:.3f}" if report["ink_kept"] is not None else "n/a"
    if oracle:
        ink = f"{ink:<28} (oracle {oracle['ink_kept']:.3f})"
    lines.append(f"  ink kept   {ink}")
    lines.append(
        f"  scale      median {report['content_scale_median']:.3f} "
        f"(p05 {report['content_scale_p05']:.3f}, p95 {report['content_scale_p95']:.3f})"
    )
    seconds = report["seconds"]
    parts = []
    if "training" in seconds:
        resumed = report.get("resumed_from_epoch")
        note = f", resumed after epoch {resumed}" if resumed is not None else ""
        parts.append(f"training {_format_seconds(seconds['training'])}{note}")
    parts.append(f"aligning {_format_seconds(seconds['aligning'])}")
    parts.append(f"total {_format_seconds(seconds['total'])}")
    lines.append(f"  time       {', '.join(parts)} ({report['backend']} backend)")
    lines.append(f"  outputs    {output}{os.sep}: {' '.join(report['files'])}")
    return lines
