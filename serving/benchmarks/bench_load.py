"""Soak test of the HTTP service: many clients, good and malformed requests, for a while.

Starts `python -m keras_congeal_serving serve` on 127.0.0.1 and runs C client
threads (keep-alive `http.client` connections) for D seconds. Each request is
drawn at random (seeded) from good ones (PNG files, a .npy batch) and hostile
ones: not an image, wrong size, NaN, floats scaled 0-255, a PNG header claiming
30000x30000 (decompression bomb), small-file 4096x4096 PNGs (from headers they
fit no 28x28 model; decoded they would take 16 MiB each), too many images,
unknown format, wrong content type. Every answer must be the expected 200 or
4xx: any 5xx, connection error or unexpected status fails the run. The
service's resident memory (VmRSS, /proc) is sampled every 0.5 s; it must stay
flat: the median of the last quarter of the run may exceed the median of the
first quarter by at most --max-rss-growth-mb. Afterwards /health and /ready
must answer 200 and a good request must still align.

Usage examples:

    # The README numbers: 64 clients for 60 s on the toy 28x28 model
    python serving/benchmarks/bench_load.py --clients 64 --duration 60 --output load.json

    # A real exported model
    python serving/benchmarks/bench_load.py --model aligner.onnx --clients 64 --duration 60

Exit status 0 when every check passed, 1 otherwise. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter

import numpy as np
from bench_http import ServiceError, build_payload, get, multipart_files, running_service

from keras_congeal_serving.testing import header_only_png, make_translation_model

BAD_FRACTION = 0.5


def npy(array: np.ndarray) -> tuple[bytes, str]:
    return build_payload("npy", array)


def request_kinds(height: int, width: int, channels: int, max_batch: int) -> dict:
    """name -> (body, content type, query, expected status)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    good = rng.integers(0, 256, size=(4, height, width, channels), dtype=np.uint8)
    odd = np.zeros((height + 1, width, channels), np.uint8)
    large = io.BytesIO()
    Image.new("L" if channels == 1 else "RGB", (4096, 4096)).save(large, "PNG", compress_level=9)
    nan = good.astype(np.float32) / 255
    nan[1, 0, 0, 0] = np.nan
    return {
        "good_png": (*build_payload("png", good[:1]), "", 200),
        "good_npy": (*npy(good), "", 200),
        "not_an_image": (*multipart_files([b"definitely not a png"]), "", 400),
        "wrong_size": (*build_payload("png", odd[None]), "", 422),
        "nan": (*npy(nan), "", 422),
        "float_0_255": (*npy(good.astype(np.float32)), "", 422),
        "bomb_header": (*multipart_files([header_only_png(30000, 30000)]), "", 413),
        "large_pngs": (*multipart_files([large.getvalue()] * 8), "", 422),
        "too_many": (*npy(np.zeros((max_batch + 1, height, width, channels), np.uint8)), "", 413),
        "bad_format": (*npy(good[:1]), "?format=jpeg", 400),
        "wrong_type": (b"hello", "text/plain", "", 415),
    }


def rss_bytes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(line.split()[1]) * 1024
    return values["VmRSS"], values["VmHWM"]


def soak(port: int, pid: int, kinds: dict, clients: int, duration: float, seed: int) -> dict:
    names = sorted(kinds)
    good = [n for n in names if kinds[n][3] == 200]
    bad = [n for n in names if kinds[n][3] != 200]
    lock = threading.Lock()
    counts: Counter = Counter()
    unexpected: Counter = Counter()
    latencies: list[float] = []
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    start = time.monotonic()

    def sampler():
        while not stop.is_set():
            samples.append((time.monotonic() - start, rss_bytes(pid)[0]))
            stop.wait(0.5)

    def client(index: int):
        rng = np.random.default_rng(seed + index)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() - start < duration:
            name = str(rng.choice(bad if rng.random() < BAD_FRACTION else good))
            body, content_type, query, expected = kinds[name]
            began = time.perf_counter()
            try:
                connection.request(
                    "POST", "/v1/align" + query, body=body, headers={"Content-Type": content_type}
                )
                response = connection.getresponse()
                detail = response.read()[:200]
                status = str(response.status)
                if response.getheader("connection", "").lower() == "close":
                    connection.close()
            except (OSError, http.client.HTTPException) as error:
                status, detail = type(error).__name__, b""
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            elapsed = time.perf_counter() - began
            expected = str(expected)
            with lock:
                counts[(name, status)] += 1
                if status != expected:
                    unexpected[f"{name}: {status} (expected {expected}) {detail!r}"] += 1
                elif expected == "200":
                    latencies.append(elapsed)
        connection.close()

    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    stop.set()
    sampler_thread.join()
    statuses = Counter()
    for (_, status), n in counts.items():
        statuses[status] += n
    quarter = max(1, len(samples) // 4)
    first = statistics.median(r for _, r in samples[:quarter])
    last = statistics.median(r for _, r in samples[-quarter:])
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    total = sum(counts.values())
    return {
        "clients": clients,
        "seconds": round(wall, 2),
        "requests": total,
        "requests_per_second": round(total / wall, 1),
        "good_requests": len(latencies),
        "good_latency_ms_p50": round(float(np.percentile(ms, 50)), 1),
        "good_latency_ms_p99": round(float(np.percentile(ms, 99)), 1),
        "statuses": dict(sorted(statuses.items())),
        "server_errors": sum(n for s, n in statuses.items() if not s.isdigit() or int(s) >= 500),
        "unexpected": dict(unexpected),
        "by_kind": {
            name: {s: n for (k, s), n in sorted(counts.items()) if k == name} for name in names
        },
        "rss_mib_first_quarter": round(first / 2**20, 1),
        "rss_mib_last_quarter": round(last / 2**20, 1),
        "rss_mib_max": round(max(r for _, r in samples) / 2**20, 1),
        "peak_rss_mib": round(rss_bytes(pid)[1] / 2**20, 1),
        "rss_samples": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help=".onnx model (default: a toy 28x28 model)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds (60)")
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--batch-timeout-ms", type=float, default=5.0)
    parser.add_argument("--intra-op-threads", type=int, default=None)
    parser.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=32.0,
        help="allowed growth of resident memory, last quarter vs first (32)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.max_batch < 1:
        parser.error("--clients and --max-batch must be >= 1 and --duration > 0")

    workdir = tempfile.mkdtemp(prefix="bench_load_")
    model = args.model
    if model is None:
        model = make_translation_model(os.path.join(workdir, "toy.onnx"), 28, 28, 1)
    from keras_congeal_serving import Aligner

    metadata = Aligner(model, intra_op_threads=1).metadata
    kinds = request_kinds(
        metadata.image_height, metadata.image_width, metadata.channels, args.max_batch
    )
    options = ["--max-batch", str(args.max_batch), "--batch-timeout-ms", str(args.batch_timeout_ms)]
    if args.intra_op_threads is not None:
        options += ["--intra-op-threads", str(args.intra_op_threads)]
    try:
        with running_service(model, options) as (port, server):
            result = soak(port, server.pid, kinds, args.clients, args.duration, args.seed)
            body, content_type, _, _ = kinds["good_png"]
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request(
                "POST", "/v1/align", body=body, headers={"Content-Type": content_type}
            )
            after = connection.getresponse()
            after.read()
            connection.close()
            result["after"] = {
                "health": get(port, "/health")[0],
                "ready": get(port, "/ready")[0],
                "align": after.status,
            }
    except ServiceError as error:
        print(error, file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    growth = result["rss_mib_last_quarter"] - result["rss_mib_first_quarter"]
    checks = {
        "no 5xx or connection errors": result["server_errors"] == 0,
        "every status as expected": not result["unexpected"],
        f"memory flat (growth {growth:+.1f} MiB <= {args.max_rss_growth_mb:g})": growth
        <= args.max_rss_growth_mb,
        "healthy afterwards": set(result["after"].values()) == {200},
    }
    result["checks"] = checks
    print(
        f"model {os.path.basename(model)} ({metadata.image_height}x{metadata.image_width}x"
        f"{metadata.channels}), {args.clients} clients for {result['seconds']} s, "
        f"{int(100 * BAD_FRACTION)}% malformed"
    )
    print(
        f"{result['requests']} requests ({result['requests_per_second']}/s), statuses "
        f"{result['statuses']}; good p50 {result['good_latency_ms_p50']} ms, "
        f"p99 {result['good_latency_ms_p99']} ms"
    )
    print(
        f"server RSS {result['rss_mib_first_quarter']} MiB (first quarter) -> "
        f"{result['rss_mib_last_quarter']} MiB (last quarter), peak {result['peak_rss_mib']} MiB"
    )
    for check, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {check}")
    for what, n in result["unexpected"].items():
        print(f"     unexpected {what}: {n}")
    if args.output:
        report = {
            "model": os.path.basename(model),  # no machine paths in results
            "model_metadata": metadata.to_dict(),
            "max_batch": args.max_batch,
            "batch_timeout_ms": args.batch_timeout_ms,
            "bad_fraction": BAD_FRACTION,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
            **result,
        }
        with open(args.output, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.output}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
