"""Micro-batching of concurrent requests into onnxruntime calls.

An asyncio queue feeds one worker that takes the first waiting job, gathers
more for up to `timeout_s` or until `max_batch` images, and runs one
onnxruntime call per image size in a dedicated thread, so the event loop keeps
accepting requests meanwhile. Every accepted job gets an answer: its results,
the error of its call, or `ShuttingDown` when the batcher stops first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

__all__ = ["MicroBatcher", "Overloaded", "ShuttingDown", "Unavailable"]

logger = logging.getLogger(__name__)


class Unavailable(Exception):
    """The batcher cannot take the job now (the service answers 503)."""


class Overloaded(Unavailable):
    """The batcher's queue holds too many images."""


class ShuttingDown(Unavailable):
    """The batcher stopped before the job was done."""


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
        self._taken: list[_Job] = []  # gathered by the worker, not answered yet
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="onnxruntime")

    @property
    def alive(self) -> bool:
        return not self._stopping and self._task is not None and not self._task.done()

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._worker(), name="keras-congeal-batcher")

    async def stop(self) -> None:
        """Stops the worker; every job not answered yet gets `ShuttingDown`."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        pending = list(self._taken)
        if self._carry is not None:
            pending.append(self._carry)
        while self._queue is not None and not self._queue.empty():
            pending.append(self._queue.get_nowait())
        self._taken, self._carry = [], None
        for job in pending:
            if not job.future.done():
                job.future.set_exception(ShuttingDown("the service is shutting down; retry"))
        # An onnxruntime call may still run: wait for it off the event loop.
        await asyncio.to_thread(self._executor.shutdown, True)

    async def submit(self, parts: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Queues prepared images; returns `(aligned, transforms)` per part."""
        if not self.alive:
            raise ShuttingDown("the service is shutting down; retry")
        job = _Job(parts, asyncio.get_running_loop().create_future())
        if self.queued_images + job.count > self.max_queue_images:
            raise Overloaded(f"{self.queued_images} images already wait for the model; retry later")
        self.queued_images += job.count
        self.metrics.queued.set(self.queued_images)
        self._queue.put_nowait(job)
        return await job.future

    def _take(self, job: _Job) -> int:
        self._taken.append(job)
        self.queued_images -= job.count
        self.metrics.queued.set(self.queued_images)
        return job.count

    async def _next_batch(self) -> list[_Job]:
        """Gathers the next call's jobs into `self._taken` (answered by `stop` if cancelled)."""
        loop = asyncio.get_running_loop()
        if self._carry is not None:
            first, self._carry = self._carry, None
        else:
            first = await self._queue.get()
        total = self._take(first)
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
            total += self._take(job)
        return self._taken

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
            self._taken = []
