"""Command line of keras_congeal_serving: `align` (batch) and `serve` (HTTP).

Usage examples:

    # Align a .npy stack (memory-mapped) into results/digits/
    python -m keras_congeal_serving align aligner.onnx digits.npy --output results/digits

    # An array inside an .npz or HDF5 file, 512 images per onnxruntime call
    python -m keras_congeal_serving align aligner.onnx data.h5 --key train/images \\
        --output results/train --batch-size 512 --providers cuda,cpu --strict

    # A folder of PNG/JPEG files (sorted by name; names kept in filenames.json)
    python -m keras_congeal_serving align aligner.onnx photos/ --output results/photos

    # Many files on a Ray cluster (the `ray` extra): shards + manifest.json, resumable
    python -m keras_congeal_serving ray-align aligner.onnx 'archive/*.npy' \\
        --output results/archive --address auto --num-workers 8 --batch-size 256

    # The HTTP service
    python -m keras_congeal_serving serve aligner.onnx --host 127.0.0.1 --port 8080 \\
        --max-batch 64 --max-payload-mb 16 --batch-timeout-ms 5

Exit status: 0 on success, 1 for a bad input, model or provider (one line on
stderr, nothing written), 2 for bad arguments; `ray-align` exits with 3 when
it finished but some files could not be aligned (listed in manifest.json).
"""

from __future__ import annotations

import argparse
import logging
import sys

from keras_congeal_serving import __version__
from keras_congeal_serving.errors import InputError, ModelError, ProviderError, WorkerError
from keras_congeal_serving.images import DEFAULT_MAX_IMAGE_PIXELS
from keras_congeal_serving.limits import ServiceLimits
from keras_congeal_serving.sources import DEFAULT_MAX_SET_PIXELS

__all__ = ["build_parser", "main"]

PROG = "keras-congeal-serving"


def _add_runtime_arguments(
    parser: argparse.ArgumentParser,
    default_providers: str = "cuda,cpu when CUDA is available, else cpu",
) -> None:
    parser.add_argument(
        "--providers",
        default=None,
        help="comma-separated onnxruntime execution providers, most preferred first: "
        "full names or aliases cpu, cuda, tensorrt, rocm, openvino, coreml, dml "
        f"(default: {default_providers})",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail if the first provider is not the one in use (no silent CPU fallback)",
    )
    parser.add_argument(
        "--intra-op-threads", type=int, default=None, help="onnxruntime intra-op threads"
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["debug", "info", "warning", "error"],
        help="logging level (default: warning for align, info for serve)",
    )


def _add_pixel_arguments(parser: argparse.ArgumentParser, set_help: str) -> None:
    """`--max-image-pixels` and `--max-set-pixels` of `align` and `ray-align`."""
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"image files: largest image decoded, told from its header "
        f"({DEFAULT_MAX_IMAGE_PIXELS})",
    )
    parser.add_argument(
        "--max-set-pixels",
        type=int,
        default=DEFAULT_MAX_SET_PIXELS,
        help=f"{set_help}, told from the headers ({DEFAULT_MAX_SET_PIXELS})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Align images with an exported keras_congeal ONNX model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    align = commands.add_parser(
        "align",
        help="align a .npy/.npz/HDF5 array or a folder of PNG/JPEG into a directory",
        description="Writes aligned.npy, transforms.npy, report.json (and filenames.json "
        "for a folder) into OUTPUT, atomically.",
    )
    align.add_argument("model", help="the exported .onnx model")
    align.add_argument("input", help=".npy, .npz or HDF5 file, or a directory of PNG/JPEG")
    align.add_argument("--output", "-o", required=True, help="output directory (created)")
    align.add_argument("--batch-size", type=int, default=64, help="images per call (64)")
    align.add_argument("--key", default=None, help="array name in .npz / dataset in HDF5")
    align.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUTPUT (only once the new result is complete)",
    )
    _add_pixel_arguments(align, "folders: most pixels decoded in all")
    align.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_runtime_arguments(align)

    ray_align = commands.add_parser(
        "ray-align",
        help="align many files on a Ray cluster (Ray Data), resumable",
        description="Align a folder, file or glob of PNG/JPEG, .npy, .npz or HDF5 files with "
        "Ray Data: OUTPUT/shards/NNNNNN/{aligned.npy,transforms.npy,shard.json} and "
        "OUTPUT/manifest.json. Rerun into the same OUTPUT to resume; bad files are listed in "
        "the manifest. Needs the `ray` extra.",
    )
    ray_align.add_argument("model", help="the exported .onnx model (readable by every node)")
    ray_align.add_argument(
        "input", help="a directory, a file, or a quoted glob ('data/**/*.npy') of input files"
    )
    ray_align.add_argument("--output", "-o", required=True, help="output directory")
    ray_align.add_argument(
        "--address",
        default=None,
        help="Ray cluster: auto (this node's cluster), ray://HEAD:10001 or HOST:PORT "
        "(default: start a local one)",
    )
    ray_align.add_argument(
        "--num-workers", type=int, default=1, help="Ray actors, one session each (1)"
    )
    ray_align.add_argument("--batch-size", type=int, default=64, help="images per call (64)")
    ray_align.add_argument(
        "--shard-size", type=int, default=1024, help="images per output shard (1024)"
    )
    ray_align.add_argument("--key", default=None, help="array name in .npz / dataset in HDF5")
    ray_align.add_argument(
        "--cpus-per-worker", type=float, default=1.0, help="CPUs reserved per worker (1)"
    )
    ray_align.add_argument(
        "--gpus-per-worker",
        type=float,
        default=None,
        help="GPUs reserved per worker (1 when the first provider is cuda/tensorrt/rocm, else 0)",
    )
    _add_pixel_arguments(ray_align, "image files: most pixels decoded per shard")
    ray_align.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_runtime_arguments(
        ray_align, default_providers="cpu; name the GPU explicitly, e.g. cuda --strict"
    )

    serve = commands.add_parser(
        "serve",
        help="run the HTTP service (FastAPI on uvicorn)",
        description="POST /v1/align, GET /health, /ready, /metrics.",
    )
    serve.add_argument("model", help="the exported .onnx model")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (8000)")
    limits = ServiceLimits()
    serve.add_argument(
        "--max-batch",
        type=int,
        default=limits.max_batch,
        help=f"most images per request and per onnxruntime call ({limits.max_batch})",
    )
    serve.add_argument(
        "--max-payload-mb",
        type=float,
        default=limits.max_payload_bytes / 2**20,
        help=f"largest request body in MiB ({limits.max_payload_bytes / 2**20:g})",
    )
    serve.add_argument(
        "--batch-timeout-ms",
        type=float,
        default=1000 * limits.batch_timeout_s,
        help="how long the batcher waits for more requests once one arrived "
        f"({1000 * limits.batch_timeout_s:g})",
    )
    serve.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="images waiting for the model beyond which requests get 503 (16 x max-batch)",
    )
    serve.add_argument(
        "--max-image-pixels",
        type=int,
        default=limits.max_image_pixels,
        help=f"largest image decoded, told from its header ({limits.max_image_pixels})",
    )
    serve.add_argument(
        "--max-request-pixels",
        type=int,
        default=limits.max_request_pixels,
        help="most pixels decoded for one request, all its images together, told from "
        f"their headers ({limits.max_request_pixels})",
    )
    serve.add_argument("--access-log", action="store_true", help="uvicorn access log")
    _add_runtime_arguments(serve)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _align(args: argparse.Namespace) -> int:
    from keras_congeal_serving.batch import run_align

    report = run_align(
        args.model,
        args.input,
        args.output,
        batch_size=args.batch_size,
        key=args.key,
        overwrite=args.overwrite,
        providers=args.providers,
        strict=args.strict,
        intra_op_threads=args.intra_op_threads,
        progress=not args.no_progress,
        max_image_pixels=args.max_image_pixels,
        max_set_pixels=args.max_set_pixels,
    )
    print(
        f"aligned {report['count']} images in {report['seconds']:.2f} s "
        f"({report['images_per_second']} images/s, {', '.join(report['providers'])}) "
        f"-> {args.output}",
        file=sys.stderr,
    )
    return 0


def _ray_align(args: argparse.Namespace) -> int:
    from keras_congeal_serving.ray_align import ray_align

    manifest = ray_align(
        args.model,
        args.input,
        args.output,
        address=args.address,
        num_workers=args.num_workers,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        key=args.key,
        providers=args.providers or "cpu",
        strict=args.strict,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
        intra_op_threads=args.intra_op_threads,
        progress=not args.no_progress,
        max_image_pixels=args.max_image_pixels,
        max_set_pixels=args.max_set_pixels,
    )
    print(
        f"{manifest['count']} images in {manifest['shards_total']} shards "
        f"({manifest['shards_done']} aligned now, {manifest['shards_skipped']} already done, "
        f"{manifest['shards_failed']} failed), {len(manifest['bad_files'])} bad files "
        f"-> {args.output}/manifest.json",
        file=sys.stderr,
    )
    return 0 if not manifest["bad_files"] and manifest["complete"] else 3


def _serve(args: argparse.Namespace) -> int:
    from keras_congeal_serving.server import serve  # ImportError without the `http` extra

    serve(
        args.model,
        host=args.host,
        port=args.port,
        providers=args.providers,
        strict=args.strict,
        intra_op_threads=args.intra_op_threads,
        limits=ServiceLimits(
            max_batch=args.max_batch,
            max_payload_bytes=int(args.max_payload_mb * 2**20),
            batch_timeout_s=args.batch_timeout_ms / 1000,
            max_queue_images=args.max_queue,
            max_image_pixels=args.max_image_pixels,
            max_request_pixels=args.max_request_pixels,
        ),
        log_level=args.log_level or "info",
        access_log=args.access_log,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("align", "ray-align") and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.command == "ray-align":
        if args.num_workers < 1 or args.shard_size < 1:
            parser.error("--num-workers and --shard-size must be >= 1")
        if args.cpus_per_worker <= 0 or (args.gpus_per_worker or 0) < 0:
            parser.error("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
    if args.command == "serve":
        if args.max_batch < 1:
            parser.error("--max-batch must be >= 1")
        if args.max_payload_mb <= 0 or args.batch_timeout_ms < 0:
            parser.error("--max-payload-mb must be > 0 and --batch-timeout-ms >= 0")
        if min(args.max_image_pixels, args.max_request_pixels) < 1:
            parser.error("--max-image-pixels and --max-request-pixels must be >= 1")
    if (
        args.command in ("align", "ray-align")
        and min(args.max_image_pixels, args.max_set_pixels) < 1
    ):
        parser.error("--max-image-pixels and --max-set-pixels must be >= 1")
    default_level = "info" if args.command == "serve" else "warning"
    _configure_logging(args.log_level or default_level)
    try:
        if args.command == "align":
            return _align(args)
        if args.command == "ray-align":
            return _ray_align(args)
        return _serve(args)
    except (
        InputError,
        ModelError,
        ProviderError,
        WorkerError,
        OSError,
        ValueError,
        ImportError,
    ) as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
