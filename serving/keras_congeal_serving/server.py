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
.npy, wrong field), 413 body over `max_payload_bytes` or more than `max_batch`
images, 415 other content types, 422 input that does not fit the model (size,
channels, dtype, NaN, empty), 503 when the queue is full or not ready.

Concurrent requests are micro-batched: an asyncio queue feeds one worker that
takes the first waiting request, gathers more for up to `batch_timeout_s` or
until `max_batch` images, and runs one onnxruntime call per image size in a
dedicated thread, so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from keras_congeal_serving import __version__
from keras_congeal_serving.aligner import Aligner
from keras_congeal_serving.errors import InputError, UnreadableInputError
from keras_congeal_serving.images import decode_image, encode_png
from keras_congeal_serving.metrics import CONTENT_TYPE, Counter, Gauge, Histogram, Registry

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

__all__ = ["MicroBatcher", "ServiceMetrics", "create_app", "serve"]

logger = logging.getLogger(__name__)

ALIGN_PATH = "/v1/align"
_KNOWN_PATHS = (ALIGN_PATH, "/health", "/ready", "/metrics")
_NPY_TYPES = ("application/octet-stream", "application/x-npy")
_FORMATS = ("png", "npy")
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Overloaded(Exception):
    """The batcher's queue holds too many images."""


class ServiceMetrics:
    """The service's Prometheus metrics."""

    def __init__(self, max_batch: int):
        self.registry = Registry()
        r = self.registry.register
        self.requests = r(
            Counter(
                "keras_congeal_requests_total",
                "HTTP requests by handler and status.",
                ("handler", "status"),
            )
        )
        self.images = r(Counter("keras_congeal_images_total", "Images aligned and returned."))
        self.latency = r(
            Histogram(
                "keras_congeal_request_duration_seconds",
                "Latency of POST /v1/align (all statuses), seconds.",
                _LATENCY_BUCKETS,
            )
        )
        buckets = sorted({1, max_batch, *(2**i for i in range(max_batch.bit_length()))})
        self.batch_size = r(
            Histogram(
                "keras_congeal_batch_size",
                "Images per onnxruntime call (micro-batch size).",
                [b for b in buckets if b <= max_batch],
            )
        )
        self.inference = r(
            Histogram(
                "keras_congeal_inference_duration_seconds",
                "Duration of one onnxruntime call, seconds.",
                _LATENCY_BUCKETS,
            )
        )
        self.queued = r(Gauge("keras_congeal_queued_images", "Images waiting for the model."))
        self.info = r(
            Gauge(
                "keras_congeal_model_info",
                "The served model (value is always 1).",
                ("model_version", "model_sha256", "transform", "providers", "serving_version"),
            )
        )

    def render(self) -> str:
        return self.registry.render()


@dataclass
class _Job:
    parts: list[np.ndarray]  # prepared float32 (n, H, W, C), possibly of several sizes
    future: asyncio.Future
    count: int = field(init=False)

    def __post_init__(self):
        self.count = sum(len(p) for p in self.parts)


class MicroBatcher:
    """Groups concurrent requests into onnxruntime calls of up to `max_batch` images.

    Args:
        aligner: `Aligner`. Its `run` is called in one dedicated thread.
        max_batch: int. Most images per call (a single job never exceeds it).
        timeout_s: float. How long to wait for more jobs once one arrived.
        metrics: `ServiceMetrics`.
        max_queue_images: int. `submit` raises `Overloaded` beyond this.
    """

    def __init__(self, aligner, max_batch, timeout_s, metrics, max_queue_images):
        self.aligner = aligner
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.max_queue_images = max_queue_images
        self.queued_images = 0
        self._queue: asyncio.Queue[_Job] | None = None
        self._carry: _Job | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name="keras-congeal-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = [self._carry] if self._carry else []
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        for job in pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the service is shutting down"))
        self._executor.shutdown(wait=True)

    async def submit(self, parts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Queues prepared images; returns `(aligned, transforms)` per part."""
        job = _Job(parts, asyncio.get_running_loop().create_future())
        if self.queued_images + job.count > self.max_queue_images:
            raise Overloaded(f"{self.queued_images} images already wait for the model; retry later")
        self.queued_images += job.count
        self.metrics.queued.set(self.queued_images)
        self._queue.put_nowait(job)
        return await job.future

    async def _next_batch(self) -> list[_Job]:
        loop = asyncio.get_running_loop()
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self._queue.get()
        jobs, total = [first], first.count
        deadline = loop.time() + self.timeout_s
        while total < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
            if total + job.count > self.max_batch:
                self._carry = job  # first in the next batch
                break
            jobs.append(job)
            total += job.count
        return jobs

    def _run(self, batch: np.ndarray):
        start = time.perf_counter()
        result = self.aligner.run(batch)
        self.metrics.inference.observe(time.perf_counter() - start)
        self.metrics.batch_size.observe(len(batch))
        return result

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch()
            count = sum(job.count for job in jobs)
            self.queued_images -= count
            self.metrics.queued.set(self.queued_images)
            live = [job for job in jobs if not job.future.done()]  # skip cancelled clients
            # Group the parts of all jobs by image size: one call per size.
            groups: dict[tuple, list[tuple[int, int]]] = {}
            for j, job in enumerate(live):
                for p, part in enumerate(job.parts):
                    groups.setdefault(part.shape[1:], []).append((j, p))
            results: list[list] = [[None] * len(job.parts) for job in live]
            failed: dict[int, BaseException] = {}
            for members in groups.values():
                batch = np.concatenate([live[j].parts[p] for j, p in members])
                try:
                    aligned, transforms = await loop.run_in_executor(
                        self._executor, self._run, batch
                    )
                except Exception as error:  # keep serving; fail only these jobs
                    logger.exception("onnxruntime call failed")
                    for j, _ in members:
                        failed[j] = error
                    continue
                offset = 0
                for j, p in members:
                    n = len(live[j].parts[p])
                    results[j][p] = (aligned[offset : offset + n], transforms[offset : offset + n])
                    offset += n
            for j, job in enumerate(live):
                if job.future.done():
                    continue
                if j in failed:
                    job.future.set_exception(failed[j])
                else:
                    job.future.set_result(results[j])


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


def _parse_npy(body: bytes) -> np.ndarray:
    if not body:
        raise InputError("empty request body: send a .npy batch or multipart 'files'")
    try:
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


def create_app(
    aligner: Aligner,
    *,
    max_batch: int = 64,
    max_payload_bytes: int = 16 * 2**20,
    batch_timeout_s: float = 0.005,
    max_queue_images: int | None = None,
    max_image_pixels: int = 4096 * 4096,
) -> FastAPI:
    """Builds the FastAPI app around an existing `Aligner`.

    The lifespan warms the session up with one call before the app is ready.

    Args:
        aligner: `Aligner`. Created once, shared by all requests.
        max_batch: int. Most images per request and per onnxruntime call.
        max_payload_bytes: int. Largest request body.
        batch_timeout_s: float. Micro-batching window.
        max_queue_images: optional int. Queue bound (503 beyond it);
            defaults to `16 * max_batch`.
        max_image_pixels: int. Largest image decoded (any-size models).
    """
    metadata = aligner.metadata
    metrics = ServiceMetrics(max_batch)
    metrics.info.set(
        1,
        model_version=metadata.version,
        model_sha256=aligner.model_sha256,
        transform=metadata.transform,
        providers=",".join(aligner.providers),
        serving_version=__version__,
    )
    batcher = MicroBatcher(
        aligner,
        max_batch,
        batch_timeout_s,
        metrics,
        max_queue_images if max_queue_images is not None else 16 * max_batch,
    )
    state = {"ready": False}

    @contextlib.asynccontextmanager
    async def lifespan(app):
        warm = np.zeros(
            (1, metadata.image_height, metadata.image_width, metadata.channels), np.float32
        )
        start = time.perf_counter()
        await run_in_threadpool(aligner.run, warm)
        logger.info(
            "warm-up call took %.1f ms; serving %s (model %s, %s) on %s",
            1000 * (time.perf_counter() - start),
            aligner.model_path,
            metadata.version,
            metadata.transform,
            aligner.providers,
        )
        await batcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await batcher.stop()

    app = FastAPI(
        title="keras_congeal aligner",
        version=__version__,
        lifespan=lifespan,
        description=__doc__,
    )
    app.state.aligner = aligner
    app.state.metrics = metrics
    app.state.batcher = batcher
    app.add_middleware(_GuardAndMeasure, max_payload_bytes=max_payload_bytes, metrics=metrics)

    def ready_body() -> dict:
        return {
            "ready": state["ready"] and batcher.alive,
            "model_version": metadata.version,
            "model_sha256": aligner.model_sha256,
            "model": metadata.to_dict(),
            "providers": aligner.providers,
            "serving_version": __version__,
            "max_batch": max_batch,
            "max_payload_bytes": max_payload_bytes,
        }

    @app.get("/health")
    async def health():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready")
    async def ready():
        """Readiness: warmed up and the batcher runs; model metadata and version."""
        body = ready_body()
        return JSONResponse(body, status_code=200 if body["ready"] else 503)

    @app.get("/metrics")
    async def prometheus_metrics():
        """Prometheus text exposition."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def read_images(request: Request) -> tuple[list[np.ndarray], list[str] | None, bool]:
        """Returns (arrays, filenames, from_npy); arrays are (n, H, W[, C])."""
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == "multipart/form-data":
            form = await request.form(max_files=10 * max_batch + 10, max_fields=100)
            try:
                unexpected = [k for k in form.keys() if k != "files"]
                if unexpected:
                    raise UnreadableInputError(
                        f"unexpected form field(s) {unexpected}; send images as 'files'"
                    )
                files = form.getlist("files")
                if not files:
                    raise InputError("no images: send one or more multipart 'files' parts")
                if len(files) > max_batch:
                    raise HTTPException(
                        413,
                        f"{len(files)} images exceed the maximum batch of {max_batch}; "
                        "split the request",
                    )
                names, blobs = [], []
                for i, part in enumerate(files):
                    if not isinstance(part, UploadFile):
                        raise UnreadableInputError(f"'files' part {i} is not a file upload")
                    names.append(part.filename or f"files[{i}]")
                    blobs.append(await part.read())
            finally:
                await form.close()

            def decode_all():
                return [
                    decode_image(blob, name, metadata.channels, max_image_pixels)[None]
                    for blob, name in zip(blobs, names, strict=True)
                ]

            return await run_in_threadpool(decode_all), names, False
        if media_type in _NPY_TYPES:
            array = await run_in_threadpool(_parse_npy, await request.body())
            if array.ndim in (3, 4) and len(array) > max_batch:
                raise HTTPException(
                    413,
                    f"{len(array)} images exceed the maximum batch of {max_batch}; "
                    "split the request",
                )
            return [array], None, True
        raise HTTPException(
            415,
            f"unsupported Content-Type {media_type or '(none)'!r}: send multipart/form-data "
            "with 'files' (PNG/JPEG) or application/octet-stream with a .npy batch",
        )

    @app.post(ALIGN_PATH)
    async def align(request: Request, output_format: str | None = Query(None, alias="format")):
        """Aligns PNG/JPEG files (multipart `files`) or a .npy batch (octet-stream)."""
        if output_format is not None and output_format not in _FORMATS:
            raise HTTPException(
                400, f"format must be one of {list(_FORMATS)}, got {output_format!r}"
            )
        if not state["ready"]:
            raise HTTPException(503, "the model is not ready")
        try:
            arrays, names, from_npy = await read_images(request)

            def validate_and_prepare() -> list[np.ndarray]:
                prepared = []
                for i, array in enumerate(arrays):
                    label = names[i] if names else "body"
                    aligner.check_shape(array.shape, name=label)
                    try:
                        prepared.append(aligner.prepare(array))
                    except InputError as error:
                        raise InputError(f"{label}: {error}") from None
                return prepared

            prepared = await run_in_threadpool(validate_and_prepare)
        except UnreadableInputError as error:
            raise HTTPException(400, str(error)) from None
        except InputError as error:
            raise HTTPException(422, str(error)) from None
        output_format = output_format or ("npy" if from_npy else "png")
        shapes = {a.shape[1:] for a in arrays}
        if output_format == "npy" and len(shapes) > 1:
            raise HTTPException(422, "format=npy needs images of one size; use format=png")
        try:
            results = await batcher.submit(prepared)
        except Overloaded as error:
            raise HTTPException(503, str(error)) from None
        count = sum(len(a) for a in arrays)

        def build() -> dict:
            transforms = np.concatenate([t for _, t in results])
            body = {"count": count, "format": output_format}
            if output_format == "npy":
                dtype = arrays[0].dtype
                aligned = np.concatenate([aligner.restore(a, dtype) for a, _ in results])
                aligned = aligned.reshape((count, *arrays[0].shape[1:]))
                body.update(
                    shape=list(aligned.shape),
                    dtype=aligned.dtype.name,
                    aligned=_encode_npy(aligned),
                )
            else:
                pngs = [
                    _b64(encode_png(image))
                    for a, _ in results
                    for image in aligner.restore(a, np.uint8)
                ]
                body.update(dtype="uint8", aligned=pngs)
            if names is not None:
                body["filenames"] = names
            body["transforms"] = transforms.tolist()
            body["model_version"] = metadata.version
            return body

        body = await run_in_threadpool(build)
        metrics.images.inc(count)
        return body

    return app


def serve(
    model_path: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    providers=None,
    strict: bool = False,
    intra_op_threads: int | None = None,
    max_batch: int = 64,
    max_payload_bytes: int = 16 * 2**20,
    batch_timeout_s: float = 0.005,
    max_queue_images: int | None = None,
    max_image_pixels: int = 4096 * 4096,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Creates the session once and runs the service with uvicorn (one process)."""
    aligner = Aligner(model_path, providers, strict=strict, intra_op_threads=intra_op_threads)
    app = create_app(
        aligner,
        max_batch=max_batch,
        max_payload_bytes=max_payload_bytes,
        batch_timeout_s=batch_timeout_s,
        max_queue_images=max_queue_images,
        max_image_pixels=max_image_pixels,
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=access_log)
