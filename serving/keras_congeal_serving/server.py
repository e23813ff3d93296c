"""The HTTP service: FastAPI on uvicorn, with micro-batching.

Endpoints:
- `POST /v1/align`: either `multipart/form-data` with one or more PNG/JPEG
  parts named `files`, or a whole `.npy` batch as the body with
  `Content-Type: application/octet-stream` (uint8 0-255 or float [0, 1],
  `(N, H, W)` or `(N, H, W, C)`). Query `format=png|npy` picks how aligned
  images come back: base64 PNGs (the default for images) or one base64 `.npy`
  (the default for `.npy` input; same dtype as the input).
- `GET /health`: liveness. `GET /ready`: readiness, model metadata and version.
- `GET /metrics`: Prometheus text format.

Errors are JSON `{"detail": "..."}`: 400 unreadable input (not an image, not a
.npy, wrong field), 413 body over `max_payload_bytes`, more than `max_batch`
images, or more pixels than `max_image_pixels` per image / `max_request_pixels`
per request (told from image headers, before anything is decoded), 415 other
content types, 422 input that does not fit the model (size, channels, dtype,
NaN, floats outside [0, 1], empty), 503 when the queue is full, the model is
not ready or the service is shutting down.

Concurrent requests are micro-batched (`keras_congeal_serving.batcher`); the
metrics live in `keras_congeal_serving.metrics`, the limits and their defaults
in `keras_congeal_serving.limits`.
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import threading
import time

import numpy as np

from keras_congeal_serving import __version__
from keras_congeal_serving.aligner import Aligner
from keras_congeal_serving.batcher import MicroBatcher, Overloaded, ShuttingDown, Unavailable
from keras_congeal_serving.errors import InputError, TooLargeError, UnreadableInputError
from keras_congeal_serving.images import (
    check_total_pixels,
    decode_image,
    encode_png,
    read_header,
)
from keras_congeal_serving.limits import ServiceLimits
from keras_congeal_serving.metrics import CONTENT_TYPE, ServiceMetrics

try:
    import uvicorn
    from fastapi import FastAPI, HTTPException, Query, Request
    from fastapi.responses import JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
except ImportError as _error:  # pragma: no cover - exercised without the extra
    raise ImportError(
        "the HTTP service needs FastAPI, uvicorn and python-multipart: "
        "pip install 'keras-congeal-serving[http]'"
    ) from _error

__all__ = [
    "MicroBatcher",
    "Overloaded",
    "ServiceLimits",
    "ServiceMetrics",
    "ShuttingDown",
    "create_app",
    "serve",
]

logger = logging.getLogger(__name__)

ALIGN_PATH = "/v1/align"
_KNOWN_PATHS = (ALIGN_PATH, "/health", "/ready", "/metrics")
_NPY_TYPES = ("application/octet-stream", "application/x-npy")
_FORMATS = ("png", "npy")
# Error classes -> HTTP status, most specific first.
_STATUS = (
    (UnreadableInputError, 400),
    (TooLargeError, 413),
    (InputError, 422),
    (Unavailable, 503),
)


@contextlib.contextmanager
def _as_http_errors():
    """Turns the package's errors into `HTTPException`s with their one-line message."""
    try:
        yield
    except tuple(error for error, _ in _STATUS) as error:
        status = next(code for kind, code in _STATUS if isinstance(error, kind))
        raise HTTPException(status, str(error)) from None


class _GuardAndMeasure:
    """ASGI middleware: payload limit (413) and request metrics for every response."""

    def __init__(self, app, max_payload_bytes: int, metrics: ServiceMetrics):
        self.app = app
        self.max_payload_bytes = max_payload_bytes
        self.metrics = metrics

    def _too_large(self) -> str:
        return (
            f"request body exceeds the maximum payload of {self.max_payload_bytes} bytes "
            f"({self.max_payload_bytes / 2**20:.3g} MiB); send fewer or smaller images"
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        handler = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
        status = [500]

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        received = [0]

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > self.max_payload_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_payload_bytes:
                response = JSONResponse({"detail": self._too_large()}, status_code=413)
                await response(scope, receive, send_wrapper)
            else:
                await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            self.metrics.requests.inc(handler=handler, status=str(status[0]))
            if handler == ALIGN_PATH:
                self.metrics.latency.observe(time.perf_counter() - start)


# NumPy parses a .npy header with `ast.literal_eval`; on CPython 3.11 the AST
# constructor's recursion counter is shared between threads, and two parses that
# interleave (a garbage collection in one releases the GIL) fail with "SystemError: AST
# constructor recursion depth mismatch" (python/cpython#106905) -- seen once in ~4000
# requests of the load test. The request threads therefore parse one at a time.
_NPY_PARSE_LOCK = threading.Lock()


def _parse_npy(body: bytes) -> np.ndarray:
    if not body:
        raise InputError("empty request body: send a .npy batch or multipart 'files'")
    try:
        with _NPY_PARSE_LOCK:
            array = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as error:
        raise UnreadableInputError(f"body is not a .npy array ({error})") from None
    if not isinstance(array, np.ndarray):
        raise UnreadableInputError("body is an .npz archive; send a single .npy array")
    return array


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _encode_npy(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return _b64(buffer.getvalue())


class _Service:
    """The state and request handling behind the routes of `create_app`."""

    def __init__(self, aligner: Aligner, limits: ServiceLimits):
        self.aligner = aligner
        self.limits = limits
        self.metadata = aligner.metadata
        self.metrics = ServiceMetrics(limits.max_batch)
        self.metrics.info.set(
            1,
            model_version=self.metadata.version,
            model_sha256=aligner.model_sha256,
            transform=self.metadata.transform,
            providers=",".join(aligner.providers),
            serving_version=__version__,
        )
        self.batcher = MicroBatcher(
            aligner, limits.max_batch, limits.batch_timeout_s, self.metrics, limits.queue_images
        )
        self.ready = False

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        """Warms the session up with one call, then runs the batcher."""
        m = self.metadata
        warm = np.zeros((1, m.image_height, m.image_width, m.channels), np.float32)
        start = time.perf_counter()
        await run_in_threadpool(self.aligner.run, warm)
        logger.info(
            "warm-up call took %.1f ms; serving %s (model %s, %s) on %s",
            1000 * (time.perf_counter() - start),
            self.aligner.model_path,
            m.version,
            m.transform,
            self.aligner.providers,
        )
        await self.batcher.start()
        self.ready = True
        try:
            yield
        finally:
            self.ready = False
            await self.batcher.stop()

    def ready_body(self) -> dict:
        return {
            "ready": self.ready and self.batcher.alive,
            "model_version": self.metadata.version,
            "model_sha256": self.aligner.model_sha256,
            "model": self.metadata.to_dict(),
            "providers": self.aligner.providers,
            "serving_version": __version__,
            "max_batch": self.limits.max_batch,
            "max_payload_bytes": self.limits.max_payload_bytes,
        }

    def _too_many(self, count: int) -> HTTPException:
        return HTTPException(
            413,
            f"{count} images exceed the maximum batch of {self.limits.max_batch}; "
            "split the request",
        )

    def _decode_parts(self, blobs: list[bytes], names: list[str]) -> list[np.ndarray]:
        """Checks every header (size, channels, pixels), then decodes: nothing is
        decoded unless the whole request fits the model and the pixel budgets."""
        channels, max_image = self.metadata.channels, self.limits.max_image_pixels
        total = 0
        for blob, name in zip(blobs, names, strict=True):
            height, width, depth = read_header(blob, name, channels, max_image)
            self.aligner.check_shape((1, height, width, depth), name=name)
            total += height * width
        check_total_pixels(total, self.limits.max_request_pixels, "request", "request")
        return [
            decode_image(blob, name, channels, max_image)[None]
            for blob, name in zip(blobs, names, strict=True)
        ]

    async def _read_multipart(self, request: Request) -> tuple[list[np.ndarray], list[str]]:
        form = await request.form(max_files=10 * self.limits.max_batch + 10, max_fields=100)
        try:
            unexpected = [k for k in form.keys() if k != "files"]
            if unexpected:
                raise UnreadableInputError(
                    f"unexpected form field(s) {unexpected}; send images as 'files'"
                )
            files = form.getlist("files")
            if not files:
                raise InputError("no images: send one or more multipart 'files' parts")
            if len(files) > self.limits.max_batch:
                raise self._too_many(len(files))
            names, blobs = [], []
            for i, part in enumerate(files):
                if not isinstance(part, UploadFile):
                    raise UnreadableInputError(f"'files' part {i} is not a file upload")
                names.append(part.filename or f"files[{i}]")
                blobs.append(await part.read())
        finally:
            await form.close()
        return await run_in_threadpool(self._decode_parts, blobs, names), names

    async def _read_npy(self, request: Request) -> np.ndarray:
        array = await run_in_threadpool(_parse_npy, await request.body())
        if array.ndim in (3, 4):
            if len(array) > self.limits.max_batch:
                raise self._too_many(len(array))
            pixels = int(np.prod(array.shape[:3], dtype=np.int64))
            check_total_pixels(pixels, self.limits.max_request_pixels, "request", "request")
        return array

    async def read_images(self, request: Request) -> tuple[list[np.ndarray], list[str] | None]:
        """Returns (arrays, filenames); arrays are (n, H, W[, C]); filenames for images only."""
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            return await self._read_multipart(request)
        if media_type in _NPY_TYPES:
            return [await self._read_npy(request)], None
        raise HTTPException(
            415,
            f"unsupported Content-Type {media_type or '(none)'!r}: send multipart/form-data "
            "with 'files' (PNG/JPEG) or application/octet-stream with a .npy batch",
        )

    def _prepare(self, arrays: list[np.ndarray], names: list[str] | None) -> list[np.ndarray]:
        prepared = []
        for i, array in enumerate(arrays):
            label = names[i] if names else "body"
            self.aligner.check_shape(array.shape, name=label)
            try:
                prepared.append(self.aligner.prepare(array))
            except InputError as error:
                raise InputError(f"{label}: {error}") from None
        return prepared

    def _response(self, arrays, names, results, output_format) -> dict:
        count = sum(len(a) for a in arrays)
        transforms = np.concatenate([t for _, t in results])
        body = {"count": count, "format": output_format}
        restore = self.aligner.restore
        if output_format == "npy":
            dtype = arrays[0].dtype
            aligned = np.concatenate([restore(a, dtype) for a, _ in results])
            aligned = aligned.reshape((count, *arrays[0].shape[1:]))
            body.update(
                shape=list(aligned.shape), dtype=aligned.dtype.name, aligned=_encode_npy(aligned)
            )
        else:
            pngs = [_b64(encode_png(im)) for a, _ in results for im in restore(a, np.uint8)]
            body.update(dtype="uint8", aligned=pngs)
        if names is not None:
            body["filenames"] = names
        body["transforms"] = transforms.tolist()
        body["model_version"] = self.metadata.version
        return body

    async def align(self, request: Request, output_format: str | None) -> dict:
        if output_format is not None and output_format not in _FORMATS:
            raise HTTPException(
                400, f"format must be one of {list(_FORMATS)}, got {output_format!r}"
            )
        if not self.ready:
            raise HTTPException(503, "the model is not ready")
        with _as_http_errors():
            arrays, names = await self.read_images(request)
            prepared = await run_in_threadpool(self._prepare, arrays, names)
            output_format = output_format or ("png" if names is not None else "npy")
            if output_format == "npy" and len({a.shape[1:] for a in arrays}) > 1:
                raise HTTPException(422, "format=npy needs images of one size; use format=png")
            results = await self.batcher.submit(prepared)
        body = await run_in_threadpool(self._response, arrays, names, results, output_format)
        self.metrics.images.inc(body["count"])
        return body


def _limits(limits: ServiceLimits | None, fields: dict) -> ServiceLimits:
    if limits is None:
        return ServiceLimits(**fields)
    if fields:
        raise TypeError("pass either limits or its fields as keyword arguments, not both")
    return limits


def create_app(aligner: Aligner, limits: ServiceLimits | None = None, **kwargs) -> FastAPI:
    """Builds the FastAPI app around an existing `Aligner`.

    The lifespan warms the session up with one call before the app is ready.

    Args:
        aligner: `Aligner`. Created once, shared by all requests.
        limits: optional `ServiceLimits`; or its fields as keyword arguments
            (`max_batch`, `max_payload_bytes`, `batch_timeout_s`,
            `max_queue_images`, `max_image_pixels`, `max_request_pixels`).
            Defaults to `ServiceLimits()`.
    """
    limits = _limits(limits, kwargs)
    service = _Service(aligner, limits)
    app = FastAPI(
        title="keras_congeal aligner",
        version=__version__,
        lifespan=service.lifespan,
        description=__doc__,
    )
    app.state.aligner = aligner
    app.state.metrics = service.metrics
    app.state.batcher = service.batcher
    app.add_middleware(
        _GuardAndMeasure, max_payload_bytes=limits.max_payload_bytes, metrics=service.metrics
    )

    @app.get("/health")
    async def health():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        """Readiness: warmed up and the batcher runs; model metadata and version."""
        body = service.ready_body()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        """Prometheus text exposition."""
        return Response(service.metrics.render(), media_type=CONTENT_TYPE)

    @app.post(ALIGN_PATH)
    async def align(request: Request, output_format: str | None = Query(None, alias="format")):
        """Aligns PNG/JPEG files (multipart `files`) or a .npy batch (octet-stream)."""
        return await service.align(request, output_format)

    return app


def serve(
    model_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    providers=None,
    strict: bool = False,
    intra_op_threads: int | None = None,
    log_level: str = "info",
    access_log: bool = False,
    limits: ServiceLimits | None = None,
    **kwargs,
) -> None:
    """Creates the session once and runs the service with uvicorn (one process).

    `limits` or its fields as keyword arguments: see `create_app`.
    """
    limits = _limits(limits, kwargs)
    aligner = Aligner(model_path, providers, strict=strict, intra_op_threads=intra_op_threads)
    app = create_app(aligner, limits)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
