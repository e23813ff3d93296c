"""The HTTP service over a real socket on 127.0.0.1 (uvicorn in a subprocess)."""

import base64
import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
from PIL import Image

from keras_congeal_serving.testing import expected_translation, translation_matrices

pytestmark = pytest.mark.http

MAX_BATCH = 8
MAX_PAYLOAD_MB = 0.0625  # 64 KiB
BATCH_TIMEOUT_MS = 250  # wide, so that concurrent test requests surely meet


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port):
        self.port = port

    def request(self, method, path, body=None, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            return response.status, response.getheader("content-type", ""), data
        finally:
            connection.close()

    def json(self, method, path, body=None, headers=None):
        status, content_type, data = self.request(method, path, body, headers)
        assert content_type.startswith("application/json"), (status, content_type, data)
        return status, json.loads(data)

    def post_files(self, files, query="", field="files"):
        body, content_type = multipart(files, field)
        return self.json("POST", "/v1/align" + query, body, {"Content-Type": content_type})

    def post_npy(self, array, query=""):
        buffer = io.BytesIO()
        np.save(buffer, array)
        return self.json(
            "POST",
            "/v1/align" + query,
            buffer.getvalue(),
            {"Content-Type": "application/octet-stream"},
        )

    def metrics(self) -> str:
        status, content_type, data = self.request("GET", "/metrics")
        assert status == 200 and content_type.startswith("text/plain")
        return data.decode()


def multipart(files, field="files"):
    boundary = uuid.uuid4().hex
    chunks = []
    for name, data in files:
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        )
        chunks.append(data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(text) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def decode_npy(text) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(text)), allow_pickle=False)


def metric(text, name, **labels) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = "^" + re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" (\S+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


@contextlib.contextmanager
def running_service(model, log_path, *options):
    """Starts `python -m keras_congeal_serving serve` on a free port; yields a Client."""
    port = free_port()
    log = open(log_path, "w+")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keras_congeal_serving",
            "serve",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--intra-op-threads",
            "1",
            "--log-level",
            "warning",
            *options,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    client = Client(port)
    client.pid = process.pid
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.request("GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"the service did not start:\n{log.read()}")
            time.sleep(0.1)
        yield client
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture(scope="module")
def server(grey_model, tmp_path_factory):
    with running_service(
        grey_model,
        tmp_path_factory.mktemp("server") / "server.log",
        "--max-batch",
        str(MAX_BATCH),
        "--max-payload-mb",
        str(MAX_PAYLOAD_MB),
        "--batch-timeout-ms",
        str(BATCH_TIMEOUT_MS),
    ) as client:
        yield client


def test_health_and_ready(server, grey_model):
    assert server.json("GET", "/health") == (200, {"status": "ok"})
    status, body = server.json("GET", "/ready")
    assert status == 200 and body["ready"] is True
    assert body["model_version"] == "0.1.0" and body["serving_version"] == "0.1.0"
    assert body["model"]["image_height"] == 8 and body["model"]["channels"] == 1
    assert body["providers"] == ["CPUExecutionProvider"]
    assert len(body["model_sha256"]) == 64 and body["max_batch"] == MAX_BATCH


def test_align_png_files(server, digits):
    files = [(f"digit{i}.png", png(image)) for i, image in enumerate(digits[:3])]
    status, body = server.post_files(files)
    assert status == 200, body
    assert body["count"] == 3 and body["format"] == "png"
    assert body["filenames"] == ["digit0.png", "digit1.png", "digit2.png"]
    aligned = np.stack([decode_png(text) for text in body["aligned"]])
    np.testing.assert_array_equal(aligned, expected_translation(digits[:3], (1, 0)))
    np.testing.assert_array_equal(body["transforms"], translation_matrices((1, 0), 3))


def test_align_npy_batch(server, digits):
    status, body = server.post_npy(digits)
    assert status == 200, body
    assert body["format"] == "npy" and body["shape"] == [5, 8, 8] and body["dtype"] == "uint8"
    np.testing.assert_array_equal(decode_npy(body["aligned"]), expected_translation(digits, (1, 0)))
    assert np.asarray(body["transforms"]).shape == (5, 3, 3)


def test_align_float_npy_and_png_format(server, digits):
    images = (digits[:2] / 255.0).astype(np.float32)[..., None]
    status, body = server.post_npy(images)
    assert status == 200 and body["dtype"] == "float32"
    np.testing.assert_allclose(
        decode_npy(body["aligned"]), expected_translation(images, (1, 0)), atol=1e-6
    )
    status, body = server.post_npy(digits[:2], query="?format=png")
    assert status == 200 and body["format"] == "png"
    np.testing.assert_array_equal(
        decode_png(body["aligned"][1]), expected_translation(digits[1:2], (1, 0))[0]
    )


def _nan_batch():
    images = np.zeros((2, 8, 8), np.float32)
    images[1, 3, 3] = np.nan
    return images


@pytest.mark.parametrize(
    "send, status, message",
    [
        (lambda c: c.post_files([("x.png", b"definitely not a png")]), 400, "not a PNG or JPEG"),
        (lambda c: c.post_files([("x.png", png(np.zeros((9, 8), np.uint8)))]), 422, "9x8"),
        (lambda c: c.post_files([("c.png", png(np.zeros((8, 8, 3), np.uint8)))]), 422, "colour"),
        (lambda c: c.post_files([]), 422, "no images"),
        (
            lambda c: c.post_files([("a.png", png(np.zeros((8, 8), np.uint8)))], field="img"),
            400,
            "unexpected form field",
        ),
        (
            lambda c: c.post_files([("a.png", png(np.zeros((8, 8), np.uint8)))] * (MAX_BATCH + 1)),
            413,
            "maximum batch of 8",
        ),
        (lambda c: c.post_npy(np.zeros((MAX_BATCH + 1, 8, 8), np.uint8)), 413, "maximum batch"),
        (lambda c: c.post_npy(np.zeros((2, 128, 128), np.float32)), 413, "maximum payload"),
        (lambda c: c.post_npy(_nan_batch()), 422, "image 1 contains NaN"),
        (
            lambda c: c.post_npy(np.full((2, 8, 8), 200.0, np.float32)),
            422,
            "float images must lie in [0, 1], found values in [200, 200]",
        ),
        (lambda c: c.post_npy(np.zeros((0, 8, 8), np.uint8)), 422, "empty"),
        (lambda c: c.post_npy(np.zeros((2, 8, 8), np.int64)), 422, "unsupported dtype"),
        (lambda c: c.post_npy(np.zeros((2, 8, 8, 3), np.uint8)), 422, "3 channel"),
        (lambda c: c.post_npy(np.zeros((2, 8, 8), np.uint8), query="?format=jpeg"), 400, "format"),
        (
            lambda c: c.json(
                "POST", "/v1/align", b"\x00" * 100, {"Content-Type": "application/octet-stream"}
            ),
            400,
            "not a .npy",
        ),
        (
            lambda c: c.json(
                "POST", "/v1/align", b"", {"Content-Type": "application/octet-stream"}
            ),
            422,
            "empty request body",
        ),
        (
            lambda c: c.json("POST", "/v1/align", b"hello", {"Content-Type": "text/plain"}),
            415,
            "unsupported Content-Type",
        ),
    ],
)
def test_bad_input_gives_4xx_and_the_server_stays_healthy(server, send, status, message):
    got, body = send(server)
    assert got == status, body
    assert message in body["detail"], body
    assert server.json("GET", "/health")[0] == 200
    assert server.json("GET", "/ready")[0] == 200


def test_payload_limit_without_content_length(server):
    """A chunked body (no Content-Length) is cut off while it is being read."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        chunks = iter([b"\x93NUMPY" + b"\x00" * 40_000] * 3)  # 120 KB > 64 KiB
        connection.request(
            "POST",
            "/v1/align",
            body=chunks,
            headers={"Content-Type": "application/octet-stream"},
            encode_chunked=True,
        )
        response = connection.getresponse()
        assert response.status == 413
        assert "maximum payload" in json.loads(response.read())["detail"]
    finally:
        connection.close()


def test_service_still_aligns_after_bad_requests(server, digits):
    server.post_files([("x.png", b"garbage")])
    status, body = server.post_npy(digits[:1])
    assert status == 200 and body["count"] == 1


def test_concurrent_requests_are_micro_batched(server, digits):
    before = server.metrics()
    clients = 8
    barrier = threading.Barrier(clients)

    def one(i):
        barrier.wait()
        return server.post_files([(f"{i}.png", png(digits[i % 5]))])

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    for i, (status, body) in enumerate(results):
        assert status == 200, body
        np.testing.assert_array_equal(
            decode_png(body["aligned"][0]), expected_translation(digits[i % 5][None], (1, 0))[0]
        )
    after = server.metrics()

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    calls = delta("keras_congeal_batch_size_count")
    assert delta("keras_congeal_batch_size_sum") == clients
    assert 1 <= calls < clients, f"{clients} requests took {calls} onnxruntime calls"
    # At least one call held more than one image.
    assert delta("keras_congeal_batch_size_bucket", le="1") < calls
    assert delta("keras_congeal_requests_total", handler="/v1/align", status="200") == clients
    assert delta("keras_congeal_images_total") == clients


def test_metrics_exposition(server):
    server.post_files([("x.png", b"garbage")])
    text = server.metrics()
    sample = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? \S+$')
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    assert "# TYPE keras_congeal_request_duration_seconds histogram" in text
    assert metric(text, "keras_congeal_requests_total", handler="/v1/align", status="400") >= 1
    assert metric(text, "keras_congeal_request_duration_seconds_count") >= 1
    assert 'keras_congeal_model_info{model_version="0.1.0"' in text


def test_any_size_model_with_images_of_two_sizes(any_size_model, tmp_path):
    small = np.arange(40, dtype=np.uint8).reshape(5, 8)
    large = np.arange(120, dtype=np.uint8).reshape(10, 12)
    files = [("small.png", png(small)), ("large.png", png(large)), ("s2.png", png(small))]
    with running_service(any_size_model, tmp_path / "log", "--batch-timeout-ms", "1") as client:
        status, body = client.post_files(files)
        assert status == 200, body
        for text, image in zip(body["aligned"], [small, large, small], strict=True):
            np.testing.assert_array_equal(
                decode_png(text), expected_translation(image[None], (1, 0))[0]
            )
        np.testing.assert_array_equal(body["transforms"], translation_matrices((1, 0), 3))
        status, body = client.post_files(files, query="?format=npy")
        assert status == 422 and "one size" in body["detail"]
        # Two sizes in one request: one onnxruntime call per size.
        assert metric(client.metrics(), "keras_congeal_batch_size_count") == 2


def test_decompression_bomb_gives_413(server, bomb_png):
    status, body = server.post_files([("bomb.png", bomb_png(30000, 30000))])
    assert status == 413, body
    assert "bomb.png" in body["detail"] and "900000000 pixels" in body["detail"], body
    assert server.json("GET", "/ready")[0] == 200


def peak_memory_bytes(pid) -> int:
    """The process's peak resident set size (VmHWM), bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_headers_are_checked_before_anything_is_decoded(grey_model, tmp_path, digits):
    """8 PNGs of 4096x4096 zeros: 140 KB on the wire, 128 MiB once decoded. The
    service must refuse them from their headers, with its peak memory unchanged."""
    large = io.BytesIO()
    Image.new("L", (4096, 4096)).save(large, format="PNG", compress_level=9)
    files = [(f"large{i}.png", large.getvalue()) for i in range(MAX_BATCH)]
    with running_service(
        grey_model, tmp_path / "log", "--max-batch", str(MAX_BATCH), "--max-payload-mb", "1"
    ) as client:
        assert client.post_files([("ok.png", png(digits[0]))])[0] == 200  # warm
        before = peak_memory_bytes(client.pid)
        status, body = client.post_files(files)
        grown = peak_memory_bytes(client.pid) - before
        assert status == 422, body
        assert "large0.png: images are 4096x4096 (HxW) but the model takes 8x8" in body["detail"]
        assert grown < 16 * 2**20, f"peak memory grew by {grown / 2**20:.0f} MiB"
        assert client.post_files([("ok.png", png(digits[0]))])[0] == 200


def test_any_size_pixel_budgets(any_size_model, tmp_path, bomb_png):
    """Per image (--max-image-pixels) and per request (--max-request-pixels), from headers."""
    with running_service(
        any_size_model,
        tmp_path / "log",
        "--max-image-pixels",
        "100",
        "--max-request-pixels",
        "150",
    ) as client:
        status, body = client.post_files([("big.png", png(np.zeros((10, 12), np.uint8)))])
        assert (
            status == 413 and "big.png: 12x10 image has 120 pixels; at most 100" in body["detail"]
        ), body
        two = [(f"{i}.png", png(np.zeros((8, 10), np.uint8))) for i in range(2)]
        status, body = client.post_files(two)
        assert status == 413 and "160 pixels in all" in body["detail"], body
        status, body = client.post_files([("bomb.png", bomb_png(5000, 5000))])
        assert status == 413 and "bomb.png: 5000x5000" in body["detail"], body
        status, body = client.post_npy(np.zeros((2, 8, 10), np.uint8))
        assert status == 413 and "160 pixels in all" in body["detail"], body
        status, body = client.post_files(two[:1])
        assert status == 200, body


def test_npy_bodies_are_parsed_one_at_a_time(monkeypatch):
    # NumPy's header parse (ast.literal_eval) is not thread-safe on CPython 3.11
    # (python/cpython#106905); the request threads must not run it concurrently.
    from keras_congeal_serving import server as server_module

    active, most = [0], [0]
    lock = threading.Lock()
    real_load = np.load

    def slow_load(*args, **kwargs):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.01)
        try:
            return real_load(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(server_module.np, "load", slow_load)
    buffer = io.BytesIO()
    np.save(buffer, np.arange(6, dtype=np.uint8).reshape(1, 2, 3))
    body = buffer.getvalue()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        arrays = list(pool.map(lambda _: server_module._parse_npy(body), range(16)))
    assert most[0] == 1
    assert all(np.array_equal(a, np.arange(6).reshape(1, 2, 3)) for a in arrays)
