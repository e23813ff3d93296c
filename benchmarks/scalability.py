"""Figure 3: wall time and peak memory against the number of images N.

Each (method, N) run is a fresh child process (`--worker`), so that peak
memory is that method's alone: the parent reads the child's own
`ru_maxrss` with `os.wait4`, and the child also reports its resident memory
after its imports (TensorFlow alone is a few hundred MB), so the increment
due to the data and the method is visible too.

Methods, each doing a fixed amount of work per image so that time(N) shows
how the method scales:

* `keras_congeal`: `fit_congealer` with `CongealSettings()` defaults (D+C)
  except a fixed number of epochs (`--epochs`), then `Congealer.align` of all
  N. One epoch is N / batch_size steps, so the time per epoch is linear in N
  by construction; the per-epoch time after the first (which includes tracing
  and compilation) is reported separately.
* `lsc`: least-squares congealing (affine, `run_lsc` defaults), run to its
  own convergence; its unit of work is one Gauss-Newton iteration over all
  images (the count varies with the data).
* `rasl`: RASL (Euclidean), a fixed number of outer iterations
  (`--rasl-iterations`; its stopping rule disabled) so that runs of different
  N do the same work; each iteration is ~55-60 SVDs of a 784 x N matrix.
  Real runs to convergence take 80-160 iterations (benchmarks/baselines
  README): multiply. RASL stops at the first N whose predicted time exceeds
  `--budget-s` (extrapolated linearly from the previous N); the JSON says
  where.

Times are absolute (this machine) and normalised to N = 1000, as the paper's
Fig. 3. Data: digit 3 (the paper's Fig. 3), unperturbed; beyond the 6131
threes of MNIST's training set, infiMNIST-like deformed copies
(`keras_congeal.data.infimnist_like`) make up the count.

Usage:

    python -m benchmarks.scalability --quick             # N 1000, 2000, 4000
    python -m benchmarks.scalability --full --resume     # 1000..6000, 10k, 20k, 50k
    python -m benchmarks.scalability --quick --ns 1000 3000 --methods lsc rasl
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common

SCHEMA = "keras_congeal.scalability/1"
METHODS = ("keras_congeal", "lsc", "rasl")
MODES = {
    "quick": {"ns": [1000, 2000, 4000], "epochs": 2, "rasl_iterations": 3, "budget_s": 900},
    "full": {"ns": [1000, 2000, 3000, 4000, 5000, 6000, 10000, 20000, 50000], "epochs": 2,
             "rasl_iterations": 5, "budget_s": 3600},
}


# === Worker (child process) ===


def _make_data(args):
    """Child process: writes the images of `--n` to `--images` (keeps the
    parent free of Keras, see `main`)."""
    images, synthetic = make_images(args.n, args.digit, args.seed, args.mnist)
    np.save(args.images, images)
    Path(args.out).write_text(json.dumps({"synthetic": int(synthetic)}))
    return 0


def _worker(args):
    """Runs one method on `--images` and writes its measures to `--out`."""
    start_import = time.perf_counter()
    images = np.load(args.images)
    if args.worker == "keras_congeal":
        import keras

        from keras_congeal.training import CongealSettings, fit_congealer

        settings = CongealSettings(epochs=args.epochs, seed=args.seed)
        keras.utils.set_random_seed(args.seed)
    elif args.worker == "lsc":
        from benchmarks.baselines import run_lsc
    else:
        from benchmarks.baselines import run_rasl
    import_seconds = time.perf_counter() - start_import
    rss_after_import = common.current_rss_bytes()
    extra = {}
    start = time.perf_counter()
    if args.worker == "keras_congeal":
        epoch_times = _EpochTimes(keras)
        model, _ = fit_congealer(images, settings, monitor_size=0, verbose=0,
                                 callbacks=[epoch_times])
        fit_seconds = time.perf_counter() - start
        model.align(images.astype("float32")[..., None] / 255.0)
        steady = epoch_times.times[1:] or epoch_times.times
        extra = {
            "settings": settings.to_dict(), "fit_seconds": fit_seconds,
            "epoch_seconds": epoch_times.times,
            "steady_epoch_seconds": float(np.mean(steady)),
            "align_seconds": time.perf_counter() - start - fit_seconds,
            "work_unit": "epoch",
            "units": args.epochs,
        }
    elif args.worker == "lsc":
        result = run_lsc(images, transform="affine")
        extra = {"iterations": result["iterations"],
                 "work_unit": "Gauss-Newton iteration", "units": result["iterations"]}
    else:
        result = run_rasl(images, transform="euclidean", max_iter=args.rasl_iterations,
                          stop_delta=float("-inf"))
        extra = {"iterations": result["iterations"], "work_unit": "outer iteration",
                 "units": result["iterations"], "num_kept": result["info"]["num_kept"],
                 "transform": "euclidean"}
    seconds = time.perf_counter() - start
    if args.worker == "keras_congeal":
        extra["keras"] = common.keras_backend_info()
    out = {
        "method": args.worker, "n": int(len(images)), "seconds": seconds,
        "vm_hwm_bytes": common.peak_rss_from_proc(),
        "seconds_per_unit": seconds / max(1, extra["units"]),
        "import_seconds": import_seconds, "rss_after_import_bytes": rss_after_import,
        "self_max_rss_bytes": common.rss_bytes(), **extra,
    }
    Path(args.out).write_text(json.dumps(common._jsonable(out)))
    return 0


class _EpochTimes:
    """A Keras callback (built lazily: no Keras import at module import)."""

    def __new__(cls, keras):
        class EpochTimes(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times = []

            def on_epoch_begin(self, epoch, logs=None):
                self._start = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.times.append(time.perf_counter() - self._start)

        return EpochTimes()


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(common.REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _spawn_make_data(n, images_path, args, mnist):
    """Writes the images of N; a child process makes the synthetic ones
    (`infimnist_like` needs Keras, which the parent must not import)."""
    pool = _digit_pool(args.digit, args.seed, mnist)
    if n <= len(pool):
        np.save(images_path, pool[:n])
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "data.json")
        command = [sys.executable, "-m", "benchmarks.scalability", "--make-data", "--n", str(n),
                   "--digit", str(args.digit), "--seed", str(args.seed), "--mnist", mnist,
                   "--images", images_path, "--out", out]
        subprocess.run(command, env=_child_env(), check=True, capture_output=True)
        return json.loads(Path(out).read_text())["synthetic"]


def run_child(method, images_path, args, timeout):
    """Runs one worker; returns its measures with the child's `ru_maxrss`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, "-m", "benchmarks.scalability", "--worker", method,
                   "--images", images_path, "--out", out, "--epochs", str(args.epochs),
                   "--rasl-iterations", str(args.rasl_iterations), "--seed", str(args.seed)]
        env = _child_env()
        if method == "rasl":
            env.setdefault("OPENBLAS_NUM_THREADS", "1")
        start = time.perf_counter()
        with open(os.path.join(tmp, "log"), "w+") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = start + timeout
            status, usage = 0, None
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.perf_counter() > deadline:
                    proc.kill()
                    _, status, usage = os.wait4(proc.pid, 0)
                    proc.returncode = -9
                    break
                time.sleep(0.2)
            wall = time.perf_counter() - start
            log.seek(0)
            tail = log.read()[-2000:]
        code = os.waitstatus_to_exitcode(status) if proc.returncode != -9 else -9
        child_rss = int(usage.ru_maxrss * 1024) if usage else None
        if code != 0 or not os.path.exists(out):
            reason = "timed out" if code == -9 else f"exit code {code}"
            return {"method": method, "status": reason, "child_wall_seconds": wall,
                    "peak_rss_bytes": child_rss, "log_tail": tail}
        result = json.loads(Path(out).read_text())
    result.update(status="ok", child_wall_seconds=wall, peak_rss_bytes=child_rss,
                  parent_max_rss_bytes=common.rss_bytes())
    if result.get("rss_after_import_bytes"):
        result["peak_rss_above_import_bytes"] = child_rss - result["rss_after_import_bytes"]
    return result


# === Data ===


def _digit_pool(digit, seed, mnist):
    """The training images of `digit`, in a seeded order (NumPy only)."""
    with np.load(mnist) as data:
        x, y = data["x_train"], data["y_train"]
    pool = x[y == digit]
    return pool[np.random.default_rng(seed).permutation(len(pool))]


def make_images(n, digit, seed, mnist):
    """`n` images of `digit`: MNIST's, then infiMNIST-like copies beyond them."""
    pool = _digit_pool(digit, seed, mnist)
    if n <= len(pool):
        return pool[:n], 0
    from keras_congeal.data import infimnist_like

    extra = n - len(pool)
    sources = pool[np.arange(extra) % len(pool)]
    deformed, _ = infimnist_like(sources, seed=seed)
    return np.concatenate([pool, deformed]), extra


# === Report ===


def _key(method, n):
    return f"{method}/n{n}"


def peak_memory(result):
    """The child's peak resident memory: its `VmHWM` where Linux gives it
    (its own process image), else `ru_maxrss` (which starts from the
    parent's size at fork)."""
    return result.get("vm_hwm_bytes") or result["peak_rss_bytes"]


def per_unit(result):
    """Seconds per unit of work: a steady epoch (after the compiling first
    one) for keras_congeal, a Gauss-Newton iteration over all images for
    LSC, an outer iteration for RASL."""
    if result["method"] == "keras_congeal":
        return result["steady_epoch_seconds"]
    return result["seconds_per_unit"]


def table(results, methods, ns):
    rows = []
    for method in methods:
        base = results.get(_key(method, 1000))
        for n in ns:
            r = results.get(_key(method, n))
            if r is None:
                continue
            if r.get("status") != "ok":
                rows.append([method, n, r.get("status"), *["-"] * 8])
                continue
            rel = r["seconds"] / base["seconds"] if base and base.get("status") == "ok" else None
            rel_unit = (per_unit(r) / per_unit(base)
                        if base and base.get("status") == "ok" else None)
            rows.append([
                method, n, common.fmt(r["seconds"], 1), common.fmt(rel),
                common.fmt(per_unit(r), 2), common.fmt(1000 * per_unit(r) / n, 2),
                common.fmt(rel_unit), f"{r.get('units')} x {r.get('work_unit')}",
                common.fmt(r["peak_rss_bytes"] / 2**20, 0),
                common.fmt((r.get("vm_hwm_bytes") or 0) / 2**20, 0),
                common.fmt((r.get("peak_rss_above_import_bytes") or 0) / 2**20, 0),
            ])
    return common.markdown_table(
        ["method", "N", "seconds", "time / time(1000)", "s per unit", "ms per unit and image",
         "per unit / at 1000",
         "work", "ru_maxrss MiB", "VmHWM MiB", "above imports MiB"], rows)


def plot(results, methods, ns, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no PNG", file=sys.stderr)
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for method in methods:
        points = [(n, results[_key(method, n)]) for n in ns
                  if results.get(_key(method, n), {}).get("status") == "ok"]
        if not points:
            continue
        n_values = np.array([n for n, _ in points], float)
        seconds = np.array([r["seconds"] for _, r in points])
        unit = np.array([per_unit(r) for _, r in points])
        memory = np.array([peak_memory(r) / 2**20 for _, r in points])
        base = results.get(_key(method, 1000))
        if base and base.get("status") == "ok":
            axes[0].plot(n_values, unit / per_unit(base), "o-", label=method)
        axes[1].plot(n_values, seconds, "o-", label=method)
        axes[2].plot(n_values, memory, "o-", label=method)
    axes[0].plot([1000, max(ns)], [1, max(ns) / 1000], "k:", label="linear")
    axes[0].set(title="time per unit of work, relative to N=1000", xlabel="N",
                ylabel="relative", xscale="log", yscale="log")
    axes[1].set(title="absolute wall time", xlabel="N", ylabel="seconds", xscale="log",
                yscale="log")
    axes[2].set(title="peak RSS of the process", xlabel="N", ylabel="MiB", xscale="log")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# === Command line ===


def _parser():
    parser = common.script_parser("benchmarks.scalability", __doc__)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode")
    mode.add_argument("--full", action="store_const", const="full", dest="mode")
    parser.add_argument("--ns", type=int, nargs="+", help="numbers of images")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), metavar="METHOD",
                        help=f"some of {', '.join(METHODS)}")
    parser.add_argument("--digit", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, help="keras_congeal epochs (default 2)")
    parser.add_argument("--rasl-iterations", type=int,
                        help="RASL outer iterations per run (default 3 quick, 5 full)")
    parser.add_argument("--budget-s", type=float,
                        help="skip a run predicted to take longer (default 900 quick, 3600 full)")
    parser.add_argument("--timeout-s", type=float, default=None,
                        help="kill a run after this long (default 2 x --budget-s)")
    parser.add_argument("--mnist", default=None)
    parser.add_argument("--output-dir", default=str(common.RESULTS_DIR))
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="only rebuild the table and plot from the results file")
    parser.add_argument("--backend-note", default=None)
    # Internal: one method in a child process.
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--images", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--make-data", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.make_data:
        return _make_data(args)
    if args.mode is None:
        parser.error("one of --quick or --full is required")
    mode = MODES[args.mode]
    ns = sorted(set(args.ns or mode["ns"]))
    args.epochs = args.epochs or mode["epochs"]
    args.rasl_iterations = args.rasl_iterations or mode["rasl_iterations"]
    budget = args.budget_s or mode["budget_s"]
    timeout = args.timeout_s or 2 * budget
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown --methods {unknown}; expected some of {list(METHODS)}")
    if min(ns) < 2:
        parser.error("--ns must be >= 2")
    methods = [m for m in METHODS if m in args.methods]

    log = common.log
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / f"scalability_{args.mode}"
    if args.report_only:
        if not Path(f"{prefix}.json").exists():
            parser.error(f"--report-only: {prefix}.json does not exist")
        data = common.read_json(f"{prefix}.json")
        report(data["results"], data.get("stopped", {}), prefix, log)
        return 0
    config = {"mode": args.mode, "digit": args.digit, "seed": args.seed, "epochs": args.epochs,
              "rasl_iterations": args.rasl_iterations}
    # The parent never imports Keras: a child's ru_maxrss starts from its
    # parent's resident size at fork (Linux keeps it across exec), so a parent
    # holding TensorFlow would pollute every child's peak.
    run = common.run_record(argv, module="benchmarks.scalability", with_keras=False,
                            note=args.backend_note)
    run.update(ns=ns, methods=methods, budget_s=budget, timeout_s=timeout)
    try:
        store = common.ResultStore(f"{prefix}.json", SCHEMA, config, run, resume=args.resume)
    except ValueError as error:
        parser.error(str(error))
    store.set("notes", {
        "keras_congeal": f"{args.epochs} epochs of CongealSettings() defaults (D+C, batch 64) "
                         "then align all N; time per epoch is linear in N (N/64 steps)",
        "lsc": "affine, run_lsc defaults, to convergence",
        "rasl": f"euclidean, exactly {args.rasl_iterations} outer iterations (stopping rule "
                "off); runs to convergence need 80-160 iterations on digits",
        "peak_rss_bytes": "ru_maxrss of the child process (os.wait4), whole process incl. "
                          "imports; peak_rss_above_import_bytes subtracts the RSS after imports",
        "vm_hwm_bytes": "the child's own VmHWM (unlike ru_maxrss, not raised by the parent's "
                        "size at fork); the plot shows it where available",
        "data": f"digit {args.digit}, unperturbed MNIST train; beyond the available count, "
                "infiMNIST-like deformed copies",
    })
    mnist = common.resolve_mnist(args.mnist)  # imports no Keras (the children do)
    stopped = dict(store.data.get("stopped", {}))
    with tempfile.TemporaryDirectory() as tmp:
        for n in ns:
            images_path = os.path.join(tmp, f"images_{n}.npy")
            synthetic = None
            for method in methods:
                key = _key(method, n)
                if store.done(key) or method in stopped:
                    continue
                previous = [store.get(_key(method, m)) for m in ns if m < n]
                previous = [p for p in previous if p and p.get("status") == "ok"]
                if previous:
                    predicted = previous[-1]["seconds"] * n / previous[-1]["n"]
                    if predicted > budget:
                        stopped[method] = (f"stopped before N={n}: predicted {predicted:.0f} s "
                                           f"> budget {budget:.0f} s")
                        log(f"{method}: {stopped[method]}")
                        store.set("stopped", stopped)
                        continue
                if synthetic is None:
                    synthetic = _spawn_make_data(n, images_path, args, mnist)
                log(f"{method} N={n} ...")
                result = run_child(method, images_path, args, timeout)
                result["synthetic_images"] = synthetic
                store.put(key, result)
                if result["status"] != "ok":
                    stopped[method] = f"stopped at N={n}: {result['status']}"
                    store.set("stopped", stopped)
                    log(f"{method} N={n}: {result['status']}\n{result.get('log_tail', '')}")
                    continue
                log(f"{method} N={n}: {result['seconds']:.1f} s, peak RSS "
                    f"{peak_memory(result) / 2**20:.0f} MiB")
    store.set("stopped", stopped)
    report(store.results, stopped, prefix, log)
    return 0


def report(results, stopped, prefix, log):
    """Prints and writes the table and the plot of everything in `results`
    (earlier --resume runs too)."""
    ns = sorted({int(key.split("/n")[1]) for key in results})
    methods = [m for m in METHODS if any(k.startswith(m + "/") for k in results)]
    text = table(results, methods, ns)
    if stopped:
        text += "\n\n" + "\n".join(f"- {m}: {why}" for m, why in stopped.items())
    print(text)
    Path(f"{prefix}_table.md").write_text(text + "\n")
    path = plot(results, methods, ns, f"{prefix}.png")
    if path:
        log(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
