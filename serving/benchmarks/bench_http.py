"""Load benchmark of the HTTP service (not a test).

Starts `python -m keras_congeal_serving serve` on 127.0.0.1, sends a bounded
number of requests from C concurrent clients (threads, each with a keep-alive
`http.client` connection), then prints a table and optionally writes JSON.

Usage examples:

    # A toy contract-conforming model (needs `onnx`), 28x28 greyscale:
    python serving/benchmarks/bench_http.py --requests 400 --concurrency 1,8,32 \\
        --output bench.json

    # A real exported model, 4 images per request as one .npy body:
    python serving/benchmarks/bench_http.py --model aligner.onnx --input npy \\
        --images-per-request 4 --max-batch 64 --batch-timeout-ms 2

Only loopback traffic: the service is started here and stopped at the end;
each level stops after --requests requests or --time-limit seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_payload(kind: str, images: np.ndarray) -> tuple[bytes, str]:
    if kind == "npy":
        buffer = io.BytesIO()
        np.save(buffer, images)
        return buffer.getvalue(), "application/octet-stream"
    from PIL import Image

    pngs = []
    for image in images:
        png = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(png, "PNG")
        pngs.append(png.getvalue())
    return multipart_files(pngs)


def multipart_files(blobs: list[bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with one `files` part per blob, named 0.png, 1.png, ..."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
        + blob
        + b"\r\n"
        for i, blob in enumerate(blobs)
    ]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class ServiceError(RuntimeError):
    """The service did not start."""


@contextlib.contextmanager
def running_service(model: str, options: list[str]):
    """Runs `python -m keras_congeal_serving serve MODEL OPTIONS` on a free port of
    127.0.0.1 until it answers /health; yields `(port, process)`, stops it after."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "keras_congeal_serving",
        "serve",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *options,
    ]
    with tempfile.TemporaryFile("w+") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if get(port, "/health")[0] == 200:
                        break
                except OSError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise ServiceError(f"the service did not start:\n{log.read()}")
                time.sleep(0.1)
            yield port, server
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def metric(text: str, name: str) -> float:
    match = re.search("^" + re.escape(name) + r" (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def run_level(port, body, content_type, requests, concurrency, time_limit) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = [0]
    deadline = time.monotonic() + time_limit

    def client():
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": content_type}
        while True:
            with lock:
                if issued[0] >= requests or time.monotonic() > deadline:
                    break
                issued[0] += 1
            start = time.perf_counter()
            try:
                connection.request("POST", "/v1/align", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as error:
                status = f"{type(error).__name__}"
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - start
            with lock:
                if status == 200:
                    latencies.append(elapsed)
                else:
                    errors.append(str(status))
        connection.close()

    before = get(port, "/metrics")[1].decode()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    after = get(port, "/metrics")[1].decode()
    calls = metric(after, "keras_congeal_batch_size_count") - metric(
        before, "keras_congeal_batch_size_count"
    )
    batched = metric(after, "keras_congeal_batch_size_sum") - metric(
        before, "keras_congeal_batch_size_sum"
    )
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + len(errors),
        "ok": len(latencies),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": wall,
        "requests_per_second": len(latencies) / wall,
        "latency_ms_p50": float(np.percentile(ms, 50)),
        "latency_ms_p90": float(np.percentile(ms, 90)),
        "latency_ms_p99": float(np.percentile(ms, 99)),
        "latency_ms_max": float(np.max(ms)),
        "mean_batch_size": batched / calls if calls else None,
        "onnxruntime_calls": int(calls),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=".onnx model (default: a toy model)")
    parser.add_argument("--size", default="28x28", help="toy model HxW (28x28)")
    parser.add_argument("--channels", type=int, default=1, help="toy model channels (1)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level (200)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client counts (1,8)")
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--input", choices=["png", "npy"], default="png")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--intra-op-threads", type=int, default=None)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per level")
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.requests < 1 or min(levels) < 1 or args.images_per_request < 1:
        parser.error("--requests, --concurrency and --images-per-request must be >= 1")

    workdir = tempfile.mkdtemp(prefix="bench_http_")
    model = args.model
    if model is None:
        from keras_congeal_serving.testing import make_translation_model

        height, width = (int(v) for v in args.size.lower().split("x"))
        model = make_translation_model(
            os.path.join(workdir, "toy.onnx"), height, width, args.channels
        )
    from keras_congeal_serving import Aligner

    metadata = Aligner(model, intra_op_threads=1).metadata
    rng = np.random.default_rng(0)
    images = rng.integers(
        0,
        256,
        size=(
            args.images_per_request,
            metadata.image_height,
            metadata.image_width,
            metadata.channels,
        ),
        dtype=np.uint8,
    )
    body, content_type = build_payload(args.input, images)

    options = [
        "--max-batch",
        str(args.max_batch),
        "--batch-timeout-ms",
        str(args.batch_timeout_ms),
        "--max-payload-mb",
        str(max(16.0, 2 * len(body) / 2**20)),
    ]
    if args.intra_op_threads is not None:
        options += ["--intra-op-threads", str(args.intra_op_threads)]
    try:
        with running_service(model, options) as (port, _):
            ready = json.loads(get(port, "/ready")[1])
            run_level(port, body, content_type, 10, 2, 10)  # warm-up
            results = [
                run_level(port, body, content_type, args.requests, c, args.time_limit)
                for c in levels
            ]
    except ServiceError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    for row in results:
        row["images_per_second"] = row["requests_per_second"] * args.images_per_request
    header = (
        f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>8} {'images/s':>9} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'batch':>6}"
    )
    print(
        f"model {model} ({metadata.image_height}x{metadata.image_width}x{metadata.channels}, "
        f"{ready['providers'][0]}), {args.images_per_request} image(s)/request as "
        f"{args.input}, max-batch {args.max_batch}, batch-timeout {args.batch_timeout_ms} ms"
    )
    print(header)
    for r in results:
        batch = f"{r['mean_batch_size']:.1f}" if r["mean_batch_size"] else "-"
        print(
            f"{r['concurrency']:>7} {r['requests']:>8} {r['errors']:>6} "
            f"{r['requests_per_second']:>8.1f} {r['images_per_second']:>9.1f} "
            f"{r['latency_ms_p50']:>8.2f} {r['latency_ms_p99']:>8.2f} {batch:>6}"
        )
    if args.output:
        report = {
            "model": os.path.basename(model),  # no machine paths in results
            "model_metadata": ready["model"],
            "providers": ready["providers"],
            "input": args.input,
            "images_per_request": args.images_per_request,
            "payload_bytes": len(body),
            "max_batch": args.max_batch,
            "batch_timeout_ms": args.batch_timeout_ms,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            "results": results,
        }
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.output}")
    return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
