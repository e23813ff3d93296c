"""`MicroBatcher` on its own: grouping, carry-over, mixed sizes, queue bound, failures."""

import asyncio
import threading

import numpy as np
import pytest

pytest.importorskip("fastapi")

from keras_congeal_serving.server import (  # noqa: E402
    MicroBatcher,
    Overloaded,
    ServiceMetrics,
    ShuttingDown,
)


class FakeAligner:
    """`run` doubles the images and returns the batch index as the transform."""

    def __init__(self, fail=False):
        self.calls = []
        self.fail = fail
        self.threads = set()

    def run(self, batch):
        self.threads.add(threading.current_thread().name)
        self.calls.append(batch.shape)
        if self.fail:
            raise RuntimeError("boom")
        transforms = np.tile(np.eye(3), (len(batch), 1, 1)) * len(self.calls)
        return batch * 2, transforms


def images(count, size=4, value=1.0):
    return np.full((count, size, size, 1), value, np.float32)


def run_jobs(aligner, jobs, max_batch=4, timeout_s=0.2, max_queue=100):
    async def main():
        batcher = MicroBatcher(aligner, max_batch, timeout_s, ServiceMetrics(max_batch), max_queue)
        await batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(parts) for parts in jobs), return_exceptions=True
            )
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_concurrent_jobs_share_calls_up_to_max_batch():
    aligner = FakeAligner()
    jobs = [[images(1, value=i)] for i in range(6)]
    results = run_jobs(aligner, jobs)
    assert [shape[0] for shape in aligner.calls] == [4, 2]
    for i, result in enumerate(results):
        ((aligned, transforms),) = result
        np.testing.assert_array_equal(aligned, images(1, value=2 * i))
        assert transforms.shape == (1, 3, 3)
    assert aligner.threads == {"onnxruntime_0"}  # one dedicated thread, not the loop


def test_a_job_that_does_not_fit_waits_for_the_next_call():
    aligner = FakeAligner()
    results = run_jobs(aligner, [[images(3)], [images(3)], [images(1)]])
    # 3 first; 3 more would exceed 4, so it is carried over and leads the next call.
    assert [shape[0] for shape in aligner.calls] == [3, 4]
    assert [len(r[0][0]) for r in results] == [3, 3, 1]


def test_one_call_per_image_size():
    aligner = FakeAligner()
    results = run_jobs(aligner, [[images(1, 4), images(1, 6), images(1, 4)]])
    assert sorted(aligner.calls) == [(1, 6, 6, 1), (2, 4, 4, 1)]
    assert [part[0].shape for part in results[0]] == [(1, 4, 4, 1), (1, 6, 6, 1), (1, 4, 4, 1)]


def test_queue_bound_and_failures():
    results = run_jobs(FakeAligner(), [[images(3)], [images(3)]], max_queue=4)
    assert isinstance(results[1], Overloaded)
    results = run_jobs(FakeAligner(fail=True), [[images(1)], [images(1)]])
    assert all(isinstance(r, RuntimeError) for r in results)


class BlockingAligner(FakeAligner):
    """`run` blocks until `release` is set: a call in flight while the service stops."""

    def __init__(self):
        super().__init__()
        self.started = threading.Event()
        self.release = threading.Event()

    def run(self, batch):
        self.started.set()
        self.release.wait(10)
        return super().run(batch)


def test_stop_answers_every_accepted_job():
    """Jobs in the running call, gathered for the next one and still queued all get
    `ShuttingDown` (the service answers 503); nothing is left waiting forever."""
    aligner = BlockingAligner()

    async def main():
        batcher = MicroBatcher(aligner, 2, 0.0, ServiceMetrics(2), 100)
        await batcher.start()
        tasks = [asyncio.ensure_future(batcher.submit([images(1)])) for _ in range(5)]
        await asyncio.get_running_loop().run_in_executor(None, aligner.started.wait, 5)
        threading.Timer(0.2, aligner.release.set).start()
        await batcher.stop()
        done, pending = await asyncio.wait(tasks, timeout=2)
        for task in pending:
            task.cancel()
        assert not pending, f"{len(pending)} accepted jobs got no answer"
        assert all(isinstance(task.exception(), ShuttingDown) for task in done)
        with pytest.raises(ShuttingDown):  # and nothing new is accepted
            await batcher.submit([images(1)])

    asyncio.run(main())


@pytest.mark.parametrize("error, status", [(ShuttingDown("x"), 503), (Overloaded("x"), 503)])
def test_unavailable_jobs_are_answered_503(error, status):
    from fastapi import HTTPException

    from keras_congeal_serving.server import _as_http_errors

    with pytest.raises(HTTPException) as info, _as_http_errors():
        raise error
    assert info.value.status_code == status
