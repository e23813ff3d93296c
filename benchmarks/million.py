"""Congeal a very large synthetic set: up to 1,000,000 infiMNIST-like digits.

The paper's Sec. 3.4 aligns 1,000,000 infiMNIST digits of one class. This
script makes N infiMNIST-like (or affNIST-like, or perspective-perturbed)
images of one digit with `keras_congeal.data`, block by block, into a uint8
`.npy` file on disk; trains the default `Congealer` on batches read from it;
aligns the whole set in blocks and reports APSNR before/after with the ink
kept and the content scale, all streamed (running sums).

Memory stays flat in N. Generation runs on `--workers` processes (each draws
and perturbs whole blocks and writes them straight into the file); the set is
read with positional file reads (`--read pread`), never memory-mapped, so a
batch lives in memory only while it is used. The JSON records, per phase
(generation, training, alignment), the process's peak resident memory (RSS,
the kernel's high-water mark reset at each phase) and the peaks of its
anonymous (allocated) and file-backed (mapped files: shared libraries, a
memory map) parts, and the generation workers' own peaks. `--read mmap`
memory-maps the set instead: every page read stays in the resident set as
file-backed memory, up to the whole file.

With `--work-dir`, a killed run resumes where it stopped: generated blocks
are kept (`images.npy` + `progress.json`) and training continues from the
last finished epoch (`keras.callbacks.BackupAndRestore`). Without it, a
temporary directory is used and removed.

Meant for a GPU (JAX backend); runs anywhere with a smaller `--n`
(`--train-steps` caps the training for memory measurements on a CPU).

Usage:
    python -m benchmarks.million --digit 3 --n 1000000 --protocol infimnist \\
        --epochs 2 --batch-size 1024 --work-dir /scratch/million --output million.json
    python -m benchmarks.million --n 20000 --epochs 1 --batch-size 256   # a CPU
"""

import argparse
import contextlib
import gc
import math
import os
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import numpy as np

try:
    from benchmarks import common
except ImportError:  # run as a script: python benchmarks/million.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import common

SCHEMA = "keras_congeal.million/2"
PROTOCOLS = ("infimnist", "affnist", "perspective")
BLOCK = 16384  # images generated per step: bounds the memory
GENERATION_CHUNK = 256  # images perturbed at once in a worker (~30 MB of temporaries)
METER_CHUNK = 4096  # images added to the running statistics at once (float copies)
# The generation workers compute with NumPy on one thread each: the Keras numpy
# backend imports no TensorFlow (about 130 MB per process instead of 500), and
# the processes, not threads, use the cores.
WORKER_ENVIRONMENT = {
    "KERAS_BACKEND": "numpy",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.million",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]),
    )
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--n", type=int, default=100_000, help="images (default 100000)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="infimnist")
    parser.add_argument("--sigma", type=float, default=0.2, help="for --protocol perspective")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="default: CongealSettings' (1e-3)"
    )
    parser.add_argument(
        "--train-steps",
        type=int,
        default=None,
        help="stop training after this many steps (default: every epoch in "
        "full); to measure memory and speed where a whole epoch is too "
        "slow: the alignment is then that of a partly trained model",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count(),
        help="processes generating the set (default: the machine's cores)",
    )
    parser.add_argument(
        "--align-batch-size",
        type=int,
        default=8192,
        help="images per forward pass when aligning (default 8192)",
    )
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32")
    parser.add_argument(
        "--read",
        choices=("pread", "mmap"),
        default="pread",
        help="read the set by positional file reads (default: resident "
        "memory stays at one batch) or through a memory map (every page "
        "read stays resident, up to the whole file)",
    )
    parser.add_argument(
        "--mnist",
        default=None,
        help="mnist.npz or its folder (default: $KERAS_CONGEAL_DATA, ../shared/data)",
    )
    parser.add_argument(
        "--work-dir",
        default=None,
        help="keep the generated set and training backups here, and resume "
        "from them (default: a temporary directory, removed)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSON file for the results (default: benchmarks/results/million_<protocol>_n<N>.json)",
    )
    parser.add_argument("--backend-note", default=None)
    return parser


# === The image file, read and written without a memory map ===


class NpyRows:
    """The rows (images) of a `.npy` file, read and written by positional
    file I/O (`os.preadv`, `os.pwritev`), never memory-mapped.

    A memory map keeps every page it has read in the process's resident set
    (file-backed, up to the whole file after one epoch); a positional read
    copies the rows into a new array, freed with the batch, so resident
    memory stays at one batch whatever the file's size (the kernel's page
    cache, shared and reclaimable, is not the process's). Indexable like the
    array by what `fit_congealer`, `ImageBatches` and the alignment loop use:
    an int, a slice, an array of indices; `rows[a:b] = block` writes when
    opened with `writable=True`. Threads may share it (positional I/O).

    Args:
        path: a `.npy` file (C order, no objects).
        writable: bool. Open for writing too. Defaults to `False`.
    """

    def __init__(self, path, writable=False):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, fortran_order, dtype = read_header(f)
            self.offset = f.tell()
        if fortran_order or dtype.hasobject or not shape:
            raise ValueError(
                f"{path}: expected a C-order array of images without objects, "
                f"got shape {shape}, dtype {dtype}, fortran_order={fortran_order}."
            )
        self.shape, self.dtype, self.ndim = tuple(shape), dtype, len(shape)
        self.row_shape = self.shape[1:]
        self.row_bytes = dtype.itemsize * math.prod(self.row_shape)
        self.writable = writable
        self._fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        self._close = weakref.finalize(self, os.close, self._fd)

    def close(self):
        self._close()

    def __len__(self):
        return self.shape[0]

    @property
    def nbytes(self):
        return self.row_bytes * len(self)

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, (int, np.integer)):
            if not -n <= key < n:
                raise IndexError(f"index {key} is out of range for {n} images")
            return self[int(key) % n : int(key) % n + 1][0]
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return self[np.arange(start, stop, step)]
            out = np.empty((max(0, stop - start), *self.row_shape), self.dtype)
            self._read_into(out, start)
            return out
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (n,):
                raise IndexError(f"a boolean index of shape {index.shape} for {n} images")
            index = np.flatnonzero(index)
        if index.ndim != 1 or not (index.dtype.kind in "iu" or index.size == 0):
            raise TypeError(f"NpyRows takes an int, a slice or a 1-D array of indices, not {key!r}")
        if index.size and not (-n <= index.min() and index.max() < n):
            raise IndexError(f"indices out of range for {n} images")
        index = index.astype(np.int64) % max(n, 1)
        out = np.empty((len(index), *self.row_shape), self.dtype)
        # One read per run of consecutive indices.
        breaks = [0, *(np.flatnonzero(np.diff(index) != 1) + 1), len(index)]
        for first, last in zip(breaks[:-1], breaks[1:], strict=False):
            if last > first:
                self._read_into(out[first:last], int(index[first]))
        return out

    def __setitem__(self, key, values):
        if not self.writable:
            raise ValueError("NpyRows opened read-only: pass writable=True to write.")
        start, stop, step = key.indices(len(self)) if isinstance(key, slice) else (0, 0, 0)
        if step != 1:
            raise TypeError(f"NpyRows writes a contiguous slice of rows, not {key!r}")
        values = np.ascontiguousarray(values, self.dtype)
        if values.shape != (stop - start, *self.row_shape):
            raise ValueError(
                f"expected {stop - start} rows of shape {self.row_shape}, "
                f"got an array of shape {values.shape}"
            )
        view = memoryview(values.reshape(-1).view(np.uint8))
        position = self.offset + start * self.row_bytes
        while view.nbytes:
            written = os.pwritev(self._fd, [view], position)
            view, position = view[written:], position + written

    def _read_into(self, out, start):
        """Fills the contiguous array `out` with the rows from `start` on."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        position = self.offset + start * self.row_bytes
        while view.nbytes:
            count = os.preadv(self._fd, [view], position)
            if count == 0:
                raise EOFError(f"the .npy file ends before row {start + len(out)}")
            view, position = view[count:], position + count


# === Memory, per phase ===


_MEMORY_FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def _memory_status():
    """This process's resident memory from `/proc/self/status`, bytes
    (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`, `RssShmem`); `{}` off Linux."""
    return common.proc_status_bytes(_MEMORY_FIELDS)


class MemoryPeaks:
    """Peak resident memory of this process, phase by phase (Linux).

    `rss_bytes`: the kernel's exact high-water mark (`VmHWM`), reset at the
    start of each phase (`/proc/self/clear_refs`); when it cannot be reset,
    the largest sampled `VmRSS`. `anon_bytes` (memory the process allocated:
    heap, arrays, thread stacks) and `file_bytes` (pages of mapped files: the
    shared libraries, a memory-mapped set; `RssFile + RssShmem`) are sampled
    every `interval` seconds by a thread. Off Linux, every figure is `None`.
    """

    def __init__(self, interval=0.01):
        self.interval = interval
        self.phases = {}
        self._lock = threading.Lock()
        self._peaks = {}
        self._reset_works = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_forever, daemon=True)

    def start(self):
        self.reset()
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join()

    def reset(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM
            self._reset_works = True
        except OSError:
            self._reset_works = False
        with self._lock:
            self._peaks = {}
        self._sample()

    def _sample(self):
        status = _memory_status()
        if not status:
            return
        now = {
            "rss_bytes": status["VmRSS"],
            "anon_bytes": status["RssAnon"],
            "file_bytes": status["RssFile"] + status.get("RssShmem", 0),
        }
        with self._lock:
            for key, value in now.items():
                self._peaks[key] = max(value, self._peaks.get(key, 0))

    def _sample_forever(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def snapshot(self):
        """The peaks since the last reset: `rss_bytes`, `anon_bytes`, `file_bytes`."""
        self._sample()
        with self._lock:
            peaks = dict(self._peaks)
        if not peaks:
            return {"rss_bytes": None, "anon_bytes": None, "file_bytes": None}
        if self._reset_works:
            peaks["rss_bytes"] = max(peaks["rss_bytes"], _memory_status()["VmHWM"])
        return peaks

    @contextlib.contextmanager
    def phase(self, name):
        """Records the peaks of the `with` block as `phases[name]`."""
        self.reset()
        try:
            yield
        finally:
            self.phases[name] = self.snapshot()


# === Generation ===


@contextlib.contextmanager
def _environment(values):
    """`os.environ` updated with `values` inside the block (inherited by the
    processes started there), restored after it."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _block_seed(seed, index):
    """Each generation block draws from its own stream, so that a resumed
    run makes the same images as an uninterrupted one."""
    return seed * 1_000_003 + index


_WORKER = {}  # a generation worker's state, set once by `_start_worker`


def _start_worker(path, sources, config):
    """Initialises a generation worker: the sources arrive once, the output
    file is opened once, and the worker's memory is sampled from now on.
    `config`: `protocol`, `sigma`, `seed`, `n` and `block` (images a block)."""
    _WORKER.update(config, sources=sources, images=NpyRows(path, writable=True))
    _WORKER["memory"] = MemoryPeaks().start()


def _block_picks(index, rng):
    """Indices into the sources of block `index`'s images: a permutation of
    the sources when the set is not larger than them, else independent
    uniform draws from the block's own stream `rng`."""
    w = _WORKER
    first = index * w["block"]
    count = min(w["block"], w["n"] - first)
    if w["n"] <= len(w["sources"]):
        order = np.random.default_rng(w["seed"]).permutation(len(w["sources"]))
        return order[first : first + count]
    return rng.integers(len(w["sources"]), size=count)


def _make_block(index):
    """Draws and perturbs block `index` and writes it into the images file,
    `GENERATION_CHUNK` images at a time (in a worker process). Returns the
    seconds spent, the worker's process id and its memory peaks so far."""
    from keras_congeal.data import (
        iter_affnist_like,
        iter_infimnist_like,
        iter_perspective_perturbation,
    )

    w = _WORKER
    start = time.perf_counter()
    rng = np.random.default_rng(_block_seed(w["seed"], index))
    chunk = w["sources"][_block_picks(index, rng)]
    if w["protocol"] == "infimnist":
        chunks = iter_infimnist_like(chunk, seed=rng, chunk_size=GENERATION_CHUNK)
    elif w["protocol"] == "affnist":
        chunks = iter_affnist_like(chunk, seed=rng, chunk_size=GENERATION_CHUNK)
    else:
        chunks = iter_perspective_perturbation(
            chunk, w["sigma"], seed=rng, chunk_size=GENERATION_CHUNK
        )
    first = index * w["block"]
    for images, _ in chunks:
        w["images"][first : first + len(images)] = images
        first += len(images)
    return time.perf_counter() - start, os.getpid(), w["memory"].snapshot()


def generate(sources, args, work_dir, log):
    """Writes N perturbed images into `work_dir/images.npy`, BLOCK by BLOCK
    on `args.workers` processes, resuming after the last finished block.

    Each worker receives the sources once, then only block numbers: it
    draws the block's picks and perturbations from the block's own stream
    and writes its images into the file itself (positional writes, no
    memory map), so the parent copies nothing and the images do not depend
    on the number of workers. Blocks are recorded as done in order.

    Returns:
        `(seconds, workers)`: the wall seconds spent generating, and the
        workers' memory peaks, `{pid: {"rss_bytes", "anon_bytes",
        "file_bytes"}}` (empty when nothing was left to generate).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = 40 if args.protocol == "affnist" else sources.shape[1]
    path, progress_path = work_dir / "images.npy", work_dir / "progress.json"
    identity = {
        "protocol": args.protocol,
        "digit": args.digit,
        "n": args.n,
        "sigma": args.sigma,
        "seed": args.seed,
        "block": BLOCK,
        "picks": "per-block",
    }
    progress = common.read_json(progress_path) if progress_path.exists() else None
    if progress is None or progress.get("identity") != identity or not path.exists():
        # Writes the header and sizes the (sparse) file; no page is touched.
        created = np.lib.format.open_memmap(
            path, mode="w+", dtype=np.uint8, shape=(args.n, size, size)
        )
        del created
        progress = {"identity": identity, "blocks_done": 0, "seconds": 0.0}
    else:
        log(f"resuming generation after block {progress['blocks_done']}")
    blocks = range(progress["blocks_done"], -(-args.n // BLOCK))
    workers = {}
    if not blocks:
        return progress["seconds"], workers
    start = time.perf_counter()
    # "spawn": the parent has loaded the backend, which must not be forked.
    with (
        _environment(WORKER_ENVIRONMENT),
        ProcessPoolExecutor(
            max_workers=max(1, min(args.workers, len(blocks))),
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
            initargs=(
                str(path),
                sources,
                {
                    "protocol": args.protocol,
                    "sigma": args.sigma,
                    "seed": args.seed,
                    "n": args.n,
                    "block": BLOCK,
                },
            ),
        ) as pool,
    ):
        for index, (_, pid, peaks) in zip(blocks, pool.map(_make_block, blocks), strict=True):
            workers[pid] = peaks
            progress["blocks_done"] = index + 1
            progress["seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            common.write_json_atomic(progress_path, progress)
            log(f"generated {min((index + 1) * BLOCK, args.n)}/{args.n} images")
    return progress["seconds"], workers


def _workers_memory(workers):
    """The generation workers' peaks: the largest of one worker and their
    sum (an upper bound of what they held at once), per figure."""
    out = {"count": len(workers)}
    for key in ("rss_bytes", "anon_bytes", "file_bytes"):
        values = [peaks[key] for peaks in workers.values() if peaks[key] is not None]
        out[f"max_{key}"] = max(values) if values else None
        out[f"sum_{key}"] = sum(values) if values else None
    return out


# === Training and alignment ===


def _device_data():
    """`fit_congealer`'s `device_data`: the set goes on an accelerator when
    it fits ("auto"), never on a CPU, where the "device" is host memory."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    return "auto" if jax.devices()[0].platform != "cpu" else False


def _step_counter(limit=None):
    """A callback that counts the training steps of this process, ends
    training after `limit` of them (`None`: never), and notes when the second
    step began (the first one's tracing and compilation done). It acts when a
    step begins: a batch-end hook would make Keras wait for every step's
    losses, and the device would idle while the host dispatches the next."""
    import keras

    class StepCounter(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps = 0
            self.second_step_began = None

        def on_train_batch_begin(self, batch, logs=None):
            self.steps += 1
            if self.steps == 2:
                self.second_step_began = time.perf_counter()
            if limit is not None and self.steps >= limit:
                self.model.stop_training = True  # after this step

    return StepCounter()


def align_streamed(model, images, align_batch_size, log, measure_threads=None):
    """Aligns `images` (uint8) block by block into an `AlignmentMeter`, as a
    pipeline: a thread reads the next block while the model aligns this one
    (the uint8 images go to the device, which scales them) and
    `measure_threads` threads (default: a quarter of the cores, 1 to 4) each
    measure a finished block into a meter of their own, merged at the end
    (NumPy releases the GIL). A block is `align_batch_size` images; at most
    `measure_threads + 2` blocks are in memory. Returns the meter and the
    seconds of each stage (`read`, `align`, `measure`: each its own busy
    time, summed over its threads, overlapping the others') and
    `measure_threads`."""
    import collections
    import queue
    from concurrent.futures import ThreadPoolExecutor

    from keras_congeal.datasets import as_float_images
    from keras_congeal.metrics import AlignmentMeter

    if measure_threads is None:
        measure_threads = max(1, min(4, (os.cpu_count() or 1) // 4))
    meters = queue.SimpleQueue()  # one per measuring thread, taken while it measures
    all_meters = [AlignmentMeter(data_range=1.0) for _ in range(measure_threads)]
    for meter in all_meters:
        meters.put(meter)
    seconds = {"read": 0.0, "align": 0.0, "measure": 0.0}
    lock = threading.Lock()

    def timed(stage, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        with lock:
            seconds[stage] += time.perf_counter() - start
        return out

    def read(first):
        return np.asarray(images[first : first + align_batch_size])

    def measure(batch, result):
        meter = meters.get()
        try:
            for at in range(0, len(batch), METER_CHUNK):
                part = slice(at, at + METER_CHUNK)
                meter.update(
                    as_float_images(batch[part], 255.0),
                    result["aligned"][part],
                    result["transforms"][part],
                )
        finally:
            meters.put(meter)

    starts = range(0, len(images), align_batch_size)
    measuring = collections.deque()
    with (
        ThreadPoolExecutor(1) as reader,
        ThreadPoolExecutor(measure_threads) as measurers,
    ):
        next_block = reader.submit(timed, "read", read, starts[0])
        for i, first in enumerate(starts):
            batch = next_block.result()
            if i + 1 < len(starts):
                next_block = reader.submit(timed, "read", read, starts[i + 1])
            result = timed("align", model.align, batch, align_batch_size)
            while len(measuring) >= measure_threads:  # bounds the blocks in memory
                measuring.popleft().result()
            measuring.append(measurers.submit(timed, "measure", measure, batch, result))
            del batch, result
            if i % 20 == 0:
                log(f"aligned {min(first + align_batch_size, len(images))}/{len(images)} images")
        for future in measuring:
            future.result()
    meter = all_meters[0]
    for other in all_meters[1:]:
        meter.merge(other)
    return meter, {**seconds, "measure_threads": measure_threads}


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if min(args.n, args.epochs, args.batch_size, args.workers, args.align_batch_size) < 1:
        parser.error("--n, --epochs, --batch-size, --workers and --align-batch-size must be >= 1")
    if args.train_steps is not None and args.train_steps < 1:
        parser.error(f"--train-steps must be >= 1, got {args.train_steps}")
    if not 0 <= args.digit <= 9:
        parser.error(f"--digit must be 0..9, got {args.digit}")
    output = Path(args.output or common.RESULTS_DIR / f"million_{args.protocol}_n{args.n}.json")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    memory = MemoryPeaks().start()
    with memory.phase("imports"):
        from keras_congeal.callbacks import EpochBackupAndRestore
        from keras_congeal.data.mnist import load_mnist
        from keras_congeal.training import CongealSettings, fit_congealer

        run = common.run_record(
            argv if argv is not None else sys.argv[1:],
            module="benchmarks.million",
            note=args.backend_note,
        )
        (x_train, y_train), _ = load_mnist(common.resolve_mnist(args.mnist))
        sources = x_train[y_train == args.digit]
        del x_train, y_train

    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work_dir = Path(args.work_dir)
            work_dir.mkdir(parents=True, exist_ok=True)
        else:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="million-")))
        with memory.phase("generation"):
            generate_seconds, workers = generate(sources, args, work_dir, log)
        if args.read == "pread":
            images = NpyRows(work_dir / "images.npy")
            stack.callback(images.close)
        else:
            images = np.load(work_dir / "images.npy", mmap_mode="r")

        settings = CongealSettings(
            epochs=args.epochs, batch_size=args.batch_size, seed=args.seed, precision=args.precision
        )
        if args.learning_rate:
            settings = settings.replace(learning_rate=args.learning_rate)
        callbacks = [EpochBackupAndRestore(str(work_dir / "backup"), delete_checkpoint=False)]
        counter = _step_counter(args.train_steps)
        callbacks.append(counter)
        device_data = _device_data()
        with memory.phase("training"):
            train_start = time.perf_counter()
            model, history = fit_congealer(
                images,
                settings,
                monitor_size=1000,
                verbose=2,
                callbacks=callbacks,
                device_data=device_data,
            )
            train_end = time.perf_counter()
            train_seconds = train_end - train_start

        with memory.phase("alignment"):
            start = time.perf_counter()
            meter, align_stages = align_streamed(model, images, args.align_batch_size, log)
            align_seconds = time.perf_counter() - start
        summary = meter.summary()
        image_stack_bytes = int(images.nbytes)
        del images, model
        # The training input iterator (unfinished after --train-steps) is
        # finalised now, not during the interpreter's shutdown (TensorFlow
        # warns then).
        gc.collect()
    memory.stop()

    phases = memory.phases
    rss = [p["rss_bytes"] for p in phases.values() if p["rss_bytes"] is not None]
    anon = [p["anon_bytes"] for p in phases.values() if p["anon_bytes"] is not None]
    worker_memory = _workers_memory(workers)
    memory_report = {
        "method": "per phase: rss_bytes = the process's peak resident memory (VmHWM reset "
        "by /proc/self/clear_refs at the phase start), anon_bytes = peak "
        "anonymous memory (RssAnon), file_bytes = peak file-backed memory "
        "(RssFile + RssShmem: shared libraries, memory maps), the last two sampled "
        "every 10 ms; generation_workers: each worker process's own peaks "
        "(max of one, sum of all); peak_bytes: the largest phase rss_bytes "
        "(ru_maxrss off Linux); generation_total_*: the parent's generation peak "
        "plus the workers' sum (the rss total counts the shared libraries once "
        "per worker: an upper bound)",
        "phases": phases,
        "generation_workers": worker_memory,
        "peak_bytes": max(rss) if rss else common.rss_bytes(),
        "peak_anon_bytes": max(anon) if anon else None,
        "generation_total_rss_bytes": (
            phases["generation"]["rss_bytes"] + (worker_memory["sum_rss_bytes"] or 0)
            if phases["generation"]["rss_bytes"] is not None
            else None
        ),
        "generation_total_anon_bytes": (
            phases["generation"]["anon_bytes"] + (worker_memory["sum_anon_bytes"] or 0)
            if phases["generation"]["anon_bytes"] is not None
            else None
        ),
        "image_stack_bytes": image_stack_bytes,
    }
    epochs_run = len(history.history.get("loss", []))
    trained = min(counter.steps * args.batch_size, epochs_run * args.n)  # images
    report = {
        "schema": SCHEMA,
        "run": run,
        "config": {
            "protocol": args.protocol,
            "digit": args.digit,
            "n": args.n,
            "sigma": args.sigma if args.protocol == "perspective" else None,
            "seed": args.seed,
            "block": BLOCK,
            "read": args.read,
            "device_data": device_data,
            "train_steps": args.train_steps,
            "settings": settings.to_dict(),
        },
        "generate_seconds": generate_seconds,
        "train_seconds": train_seconds,
        "epochs_run_in_this_process": epochs_run,
        "steps_run_in_this_process": counter.steps,
        "train_images_per_second": trained / train_seconds if epochs_run else None,
        # Without the first step (tracing, compilation, autotuning): the rate
        # of the steps after it, to the end of fit.
        "train_steady_images_per_second": (
            (trained - args.batch_size) / (train_end - counter.second_step_began)
            if epochs_run and counter.second_step_began
            else None
        ),
        "train_first_step_seconds": (
            counter.second_step_began - train_start if counter.second_step_began else None
        ),
        "align_seconds": align_seconds,
        "align_images_per_second": args.n / align_seconds,
        # Each stage's busy seconds; they overlap (align_streamed's pipeline).
        "align_read_seconds": align_stages["read"],
        "align_model_seconds": align_stages["align"],
        "align_metrics_seconds": align_stages["measure"],
        "align_measure_threads": align_stages["measure_threads"],
        "train_plus_align_seconds": train_seconds + align_seconds,
        "workers": args.workers,
        "memory": memory_report,
        "summary": summary,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    common.write_json_atomic(output, report)
    rate = report["train_images_per_second"]
    print(
        f"{args.protocol} digit {args.digit}, N = {args.n}: APSNR "
        f"{summary['apsnr_before']:.2f} -> {summary['apsnr_after']:.2f} dB, ink kept "
        f"{summary['ink_kept']:.2f}, content scale {summary['content_scale_median']:.2f}; "
        f"generate {generate_seconds:.1f} s, train {train_seconds:.1f} s"
        + (f" ({rate:.0f} img/s)" if rate else "")
        + f", align {align_seconds:.1f} s ({report['align_images_per_second']:.0f} img/s), "
        f"peak memory {memory_report['peak_bytes'] / 2**20:.0f} MiB; wrote {output}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
