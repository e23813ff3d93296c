"""Congeal a very large synthetic set: up to 1,000,000 infiMNIST-like digits.

The paper's Sec. 3.4 aligns 1,000,000 infiMNIST digits of one class. This
script makes N infiMNIST-like (or affNIST-like, or perspective-perturbed)
images of one digit with `keras_congeal.data`, block by block, into a memory
map on disk; trains the default `Congealer` on batches read lazily from it;
aligns the whole set in chunks and reports APSNR before/after with the ink
kept and the content scale, all streamed (running sums). Memory stays bounded
whatever N: the JSON records the peak resident memory of each phase.

With `--work-dir`, a killed run resumes where it stopped: generated blocks
are kept (`images.npy` + `progress.json`) and training continues from the
last finished epoch (`keras.callbacks.BackupAndRestore`). Without it, a
temporary directory is used and removed.

Meant for a GPU (JAX backend); runs anywhere with a smaller `--n`.

Usage:
    python -m benchmarks.million --digit 3 --n 1000000 --protocol infimnist \\
        --epochs 2 --batch-size 1024 --work-dir /scratch/million --output million.json
    python -m benchmarks.million --n 20000 --epochs 1 --batch-size 256   # a CPU
"""

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

try:
    from benchmarks import common
except ImportError:  # run as a script: python benchmarks/million.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks import common

SCHEMA = "keras_congeal.million/1"
PROTOCOLS = ("infimnist", "affnist", "perspective")
BLOCK = 16384  # images generated (and aligned) per step: bounds the memory


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.million", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--n", type=int, default=100_000, help="images (default 100000)")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="infimnist")
    parser.add_argument("--sigma", type=float, default=0.2, help="for --protocol perspective")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="default: CongealSettings' (1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="processes generating the set (default: the machine's cores)")
    parser.add_argument("--align-batch-size", type=int, default=8192,
                        help="images per forward pass when aligning (default 8192)")
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16"),
                        default="float32")
    parser.add_argument("--mnist", default=None,
                        help="mnist.npz or its folder (default: $KERAS_CONGEAL_DATA, "
                             "../shared/data)")
    parser.add_argument("--work-dir", default=None,
                        help="keep the generated set and training backups here, and resume "
                             "from them (default: a temporary directory, removed)")
    parser.add_argument("--output", default=None,
                        help="JSON file for the results (default: "
                             "benchmarks/results/million_<protocol>_n<N>.json)")
    parser.add_argument("--backend-note", default=None)
    return parser


def _block_seed(seed, index):
    """Each generation block draws from its own stream, so that a resumed
    run makes the same images as an uninterrupted one."""
    return seed * 1_000_003 + index


def _make_block(path, sources, picks, protocol, sigma, seed, first):
    """Perturbs `sources[picks]` into `path[first:first + len(picks)]` (a
    worker process: opens the memory map itself). Returns seconds spent."""
    import numpy as np

    from keras_congeal.data import affnist_like, infimnist_like, perspective_perturbation

    start = time.perf_counter()
    chunk = sources[picks]
    if protocol == "infimnist":
        out, _ = infimnist_like(chunk, seed=seed)
    elif protocol == "affnist":
        out, _ = affnist_like(chunk, seed=seed)
    else:
        out, _ = perspective_perturbation(chunk, sigma, seed=seed)
    images = np.load(path, mmap_mode="r+")
    images[first:first + len(out)] = out
    images.flush()
    del images
    return time.perf_counter() - start


def generate(sources, args, work_dir, log):
    """Writes N perturbed images into `work_dir/images.npy` (a memory map),
    BLOCK by BLOCK on `args.workers` processes, resuming after the last
    finished block (blocks finish in order; each has its own seed, so the
    images do not depend on the number of workers). Returns the read-only
    memory map and the wall seconds spent."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    rng = np.random.default_rng(args.seed)
    picks = rng.choice(len(sources), size=args.n, replace=args.n > len(sources))
    size = 40 if args.protocol == "affnist" else sources.shape[1]
    path, progress_path = work_dir / "images.npy", work_dir / "progress.json"
    identity = {"protocol": args.protocol, "digit": args.digit, "n": args.n,
                "sigma": args.sigma, "seed": args.seed, "block": BLOCK}
    progress = common.read_json(progress_path) if progress_path.exists() else None
    if progress is None or progress.get("identity") != identity or not path.exists():
        images = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8,
                                           shape=(args.n, size, size))
        del images
        progress = {"identity": identity, "blocks_done": 0, "seconds": 0.0}
    else:
        log(f"resuming generation after block {progress['blocks_done']}")
    blocks = range(progress["blocks_done"], -(-args.n // BLOCK))
    tasks = [(str(path), sources, picks[i * BLOCK:(i + 1) * BLOCK], args.protocol, args.sigma,
              _block_seed(args.seed, i), i * BLOCK) for i in blocks]
    start = time.perf_counter()
    # "spawn": the parent has loaded the backend, which must not be forked.
    with ProcessPoolExecutor(max_workers=max(1, min(args.workers, len(tasks) or 1)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        for index, _ in zip(blocks, pool.map(_make_block, *zip(*tasks, strict=True)),
                            strict=True) if tasks else ():
            progress["blocks_done"] = index + 1
            progress["seconds"] += time.perf_counter() - start
            start = time.perf_counter()
            common.write_json_atomic(progress_path, progress)
            log(f"generated {min((index + 1) * BLOCK, args.n)}/{args.n} images")
    return np.load(path, mmap_mode="r"), progress["seconds"]


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if min(args.n, args.epochs, args.batch_size, args.workers, args.align_batch_size) < 1:
        parser.error("--n, --epochs, --batch-size, --workers and --align-batch-size must "
                     "be >= 1")
    if not 0 <= args.digit <= 9:
        parser.error(f"--digit must be 0..9, got {args.digit}")
    output = Path(args.output or common.RESULTS_DIR / f"million_{args.protocol}_n{args.n}.json")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    import keras

    from keras_congeal.data.mnist import load_mnist
    from keras_congeal.datasets import as_float_images
    from keras_congeal.metrics import AlignmentMeter
    from keras_congeal.training import CongealSettings, fit_congealer

    run = common.run_record(argv if argv is not None else sys.argv[1:],
                            module="benchmarks.million", note=args.backend_note)
    (x_train, y_train), _ = load_mnist(common.resolve_mnist(args.mnist))
    sources = x_train[y_train == args.digit]
    memory = {"after_imports_bytes": common.current_rss_bytes()}

    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work_dir = Path(args.work_dir)
            work_dir.mkdir(parents=True, exist_ok=True)
        else:
            work_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="million-")))
        images, generate_seconds = generate(sources, args, work_dir, log)
        memory["after_generation_peak_bytes"] = common.rss_bytes()

        settings = CongealSettings(epochs=args.epochs, batch_size=args.batch_size,
                                   seed=args.seed, precision=args.precision)
        if args.learning_rate:
            settings = settings.replace(learning_rate=args.learning_rate)
        backup = keras.callbacks.BackupAndRestore(str(work_dir / "backup"),
                                                  delete_checkpoint=False)
        start = time.perf_counter()
        model, history = fit_congealer(images, settings, monitor_size=1000, verbose=2,
                                       callbacks=[backup])
        train_seconds = time.perf_counter() - start
        memory["after_training_peak_bytes"] = common.rss_bytes()

        start = time.perf_counter()
        meter = AlignmentMeter(data_range=1.0)
        meter_seconds = 0.0
        for first in range(0, len(images), BLOCK):
            batch = as_float_images(images[first:first + BLOCK], 255.0)
            result = model.align(batch, batch_size=args.align_batch_size)
            measured = time.perf_counter()
            meter.update(batch, result["aligned"], result["transforms"])
            meter_seconds += time.perf_counter() - measured
            if first // BLOCK % 10 == 0:
                log(f"aligned {min(first + BLOCK, len(images))}/{len(images)} images")
        align_seconds = time.perf_counter() - start
        memory["peak_bytes"] = common.rss_bytes()
        memory["image_stack_bytes"] = int(images.nbytes)
        summary = meter.summary()
        del images

    epochs_run = len(history.history.get("loss", []))
    report = {
        "schema": SCHEMA, "run": run,
        "config": {"protocol": args.protocol, "digit": args.digit, "n": args.n,
                   "sigma": args.sigma if args.protocol == "perspective" else None,
                   "seed": args.seed, "block": BLOCK, "settings": settings.to_dict()},
        "generate_seconds": generate_seconds,
        "train_seconds": train_seconds,
        "epochs_run_in_this_process": epochs_run,
        "train_images_per_second": epochs_run * args.n / train_seconds if epochs_run else None,
        "align_seconds": align_seconds,
        "align_images_per_second": args.n / align_seconds,
        "align_metrics_seconds": meter_seconds,
        "train_plus_align_seconds": train_seconds + align_seconds,
        "workers": args.workers,
        "memory": memory,
        "summary": summary,
        "history": {k: [float(v) for v in vals] for k, vals in history.history.items()},
    }
    common.write_json_atomic(output, report)
    rate = report["train_images_per_second"]
    print(f"{args.protocol} digit {args.digit}, N = {args.n}: APSNR "
          f"{summary['apsnr_before']:.2f} -> {summary['apsnr_after']:.2f} dB, ink kept "
          f"{summary['ink_kept']:.2f}, content scale {summary['content_scale_median']:.2f}; "
          f"train {train_seconds:.1f} s"
          + (f" ({rate:.0f} img/s)" if rate else "")
          + f", align {align_seconds:.1f} s ({report['align_images_per_second']:.0f} img/s), "
          f"peak memory {memory['peak_bytes'] / 2**20:.0f} MiB; wrote {output}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
