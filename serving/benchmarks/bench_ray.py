"""Throughput of `ray-align` with 1, 2, ... Ray workers (not a test).

Writes N random uint8 images as `.npy` files (or PNG files) into a temporary
directory, starts one local Ray cluster (or joins `--address`), then runs
`keras_congeal_serving.ray_align.ray_align` once per worker count into a fresh
output directory, and the single-process `align` command on the same files
for reference. Reported per run: images/s over the Ray Data run (worker
start-up, reading, onnxruntime, writing the shards; without `ray.init`), and
the wall time of the whole call.

Usage examples:

    # A toy contract-conforming model (needs `onnx`), 28x28 greyscale:
    python serving/benchmarks/bench_ray.py --images 100000 --workers 1,2

    # A real exported model; results as JSON:
    python serving/benchmarks/bench_ray.py --model aligner.onnx --images 100000 \\
        --workers 1,2 --output serving/benchmarks/results/ray_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np

from keras_congeal_serving import Aligner
from keras_congeal_serving.batch import run_align, write_json_atomic
from keras_congeal_serving.ray_align import ray_align
from keras_congeal_serving.sources import iter_chunks


def write_inputs(folder: str, kind: str, count: int, shape, files: int) -> None:
    """`count` random uint8 images as `files` .npy files, or as PNG files."""
    rng = np.random.default_rng(0)
    os.makedirs(folder)
    if kind == "npy":
        for index, (start, stop) in enumerate(iter_chunks(count, -(-count // files))):
            images = rng.integers(0, 256, (stop - start, *shape), dtype=np.uint8)
            np.save(os.path.join(folder, f"part-{index:03d}.npy"), images)
        return
    from PIL import Image

    for index in range(count):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        Image.fromarray(image[..., 0] if shape[-1] == 1 else image).save(
            os.path.join(folder, f"{index:07d}.png")
        )


def reference_align(model: str, folder: str, kind: str, batch_size: int, work: str) -> float:
    """Seconds of the single-process `align` command over the same input (one thread)."""
    inputs = (
        [folder]
        if kind == "png"
        else sorted(os.path.join(folder, name) for name in os.listdir(folder))
    )
    aligner = Aligner(model, "cpu", intra_op_threads=1)  # as one Ray worker
    start = time.perf_counter()
    for index, path in enumerate(inputs):
        run_align(
            model,
            path,
            os.path.join(work, f"align-{index}"),
            batch_size=batch_size,
            progress=False,
            aligner=aligner,
        )
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="exported .onnx (default: a toy model)")
    parser.add_argument("--images", type=int, default=100_000, help="images to align")
    parser.add_argument("--input", choices=("npy", "png"), default="npy", help="input files")
    parser.add_argument("--files", type=int, default=8, help=".npy files to write (8)")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--batch-size", type=int, default=256, help="images per call (256)")
    parser.add_argument("--shard-size", type=int, default=4096, help="images per shard (4096)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per worker count (2)")
    parser.add_argument("--address", default=None, help="Ray cluster (default: a local one)")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import ray

    work = tempfile.mkdtemp(prefix="bench_ray-")
    try:
        model = args.model
        if model is None:
            from keras_congeal_serving.testing import make_translation_model

            model = make_translation_model(os.path.join(work, "toy.onnx"), 28, 28, 1)
        metadata = Aligner(model, "cpu").metadata
        shape = (metadata.image_height, metadata.image_width, metadata.channels)
        folder = os.path.join(work, "input")
        write_inputs(folder, args.input, args.images, shape, args.files)
        align_seconds = reference_align(model, folder, args.input, args.batch_size, work)
        print(
            f"align (one process, one thread): {args.images / align_seconds:.0f} images/s",
            file=sys.stderr,
        )

        start = time.perf_counter()
        if args.address:
            ray.init(args.address)
        else:
            ray.init(include_dashboard=False)
        init_seconds = time.perf_counter() - start
        runs = []
        for workers in (int(w) for w in args.workers.split(",")):
            for repeat in range(args.repeats):
                output = os.path.join(work, f"ray-{workers}-{repeat}")
                manifest = ray_align(
                    model,
                    folder,
                    output,
                    num_workers=workers,
                    batch_size=args.batch_size,
                    shard_size=args.shard_size,
                    progress=False,
                )
                assert manifest["complete"] and manifest["count"] == args.images, manifest
                runs.append(
                    {
                        "workers": workers,
                        "repeat": repeat,
                        "ray_data_seconds": manifest["ray_data_seconds"],
                        "seconds": manifest["seconds"],
                        "images_per_second": manifest["images_per_second"],
                        "shards": manifest["shards_total"],
                    }
                )
                print(
                    f"{workers} worker(s), run {repeat}: {manifest['images_per_second']:.0f} "
                    f"images/s ({manifest['ray_data_seconds']:.2f} s Ray Data, "
                    f"{manifest['seconds']:.2f} s in all)",
                    file=sys.stderr,
                )
                shutil.rmtree(output)
        ray_version = ray.__version__
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result = {
        "model": os.path.basename(args.model) if args.model else "toy translation 28x28x1",
        "model_metadata": metadata.to_dict(),
        "images": args.images,
        "input": args.input,
        "files": args.files if args.input == "npy" else args.images,
        "image_shape": list(shape),
        "batch_size": args.batch_size,
        "shard_size": args.shard_size,
        "ray_version": ray_version,
        "ray_init_seconds": init_seconds,
        "align_one_thread_images_per_second": args.images / align_seconds,
        "runs": runs,
        "best_images_per_second": {
            str(w): max(r["images_per_second"] for r in runs if r["workers"] == w)
            for w in sorted({r["workers"] for r in runs})
        },
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            # A shared machine: the 1-minute load average when the runs ended.
            "load_average_1min": os.getloadavg()[0],
        },
    }
    print(json.dumps(result["best_images_per_second"]))
    if args.output:
        write_json_atomic(args.output, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
