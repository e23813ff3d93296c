"""Training throughput (images/s) of the Congealer on the current Keras backend.

Synthetic images of the preset's size (uniform noise in [0, 1]: the cost of a
step does not depend on the pixel values), the package's model
(`training.build_congealer` with `CongealSettings()` defaults except
`--objective`), per batch size, two training loops:

* `on-batch`: `model.train_on_batch(x)` on one batch already converted to a
  backend tensor (`keras.ops.convert_to_tensor`; on a GPU it stays on the
  device). Each step is the backend's compiled train step (jit on JAX,
  `tf.function` on TensorFlow) plus Keras' per-call overhead, and returns the
  losses to the host, which waits for the step to finish: the timing is
  honest about the device, and includes one small device-to-host copy and the
  Python dispatch per step. The same batch is reused (no input pipeline).
* `fit`: `model.fit(x_numpy, batch_size=B, epochs=1)` on distinct batches
  held in host memory: includes Keras' data adapter and the host-to-device
  copy of every batch (what `fit_congealer` pays for data in memory, without
  its lazy uint8 reading). Timed as fit over `warmup + steps` batches minus
  fit over `warmup` batches, so that fit's fixed per-call cost (iterator and
  callbacks set-up, ~0.1-1 s) does not count.

* `device`: `model.fit` on `keras_congeal.datasets.DeviceImageBatches` (JAX
  only): the set is put on the device once and every batch is sliced there,
  the input path `fit_congealer` takes for sets that fit in device memory.
  Timed like `fit`.

With `--flops` (JAX), the FLOPs of one training step (forward and backward,
XLA's cost analysis of the gradient compiled for the CPU, optimizer excluded) per image,
and the rate of a large matrix product on the device in the same precision
(`--precision`): each result then gives the fraction of that rate reached.

Warm-up steps (tracing, compilation, first allocation) are excluded: `--warmup`
steps run first, for each batch size and loop. Reported: seconds per step and
images per second, with the backend, its devices and the versions.

Usage:

    python -m benchmarks.bench_training --preset mnist --batch-sizes 64 256 1024 \\
        --steps 20 --output benchmarks/results/bench_training_cpu.json
    KERAS_BACKEND=jax python -m benchmarks.bench_training --objective D --steps 200
"""

import time

import numpy as np

from benchmarks import common

SCHEMA = "keras_congeal.bench_training/1"
SIZES = {"mnist": (28, 28, 1), "lfw": (64, 64, 3)}
LOOPS = ("on-batch", "fit", "device")


def bench_on_batch(model, batch, steps, warmup):
    from keras import ops

    x = ops.convert_to_tensor(batch)
    for _ in range(warmup):
        model.train_on_batch(x)
    start = time.perf_counter()
    for _ in range(steps):
        logs = model.train_on_batch(x, return_dict=True)
    seconds = time.perf_counter() - start
    return seconds, {k: float(v) for k, v in logs.items()}


TIMING_REPEATS = 3


def _steady_seconds(fit, steps, warmup):
    """Steady-state seconds of `steps` steps of `fit(count)` -> `(seconds,
    history)`: a first call traces and compiles; then calls over `warmup` and
    over `warmup + steps` batches are timed, the fastest of `TIMING_REPEATS`
    each (the others were slowed by other work on the machine), and their
    difference is the cost of `steps` steps without fit's fixed per-call cost
    (iterator and callbacks set-up). Returns `(seconds, last logs)`."""
    fit(warmup)
    short = min(fit(warmup)[0] for _ in range(TIMING_REPEATS))
    long, history = min((fit(warmup + steps) for _ in range(TIMING_REPEATS)),
                        key=lambda run: run[0])
    return long - short, {k: float(v[-1]) for k, v in history.history.items()}


def bench_fit(model, images, batch_size, steps, warmup):
    """`_steady_seconds` of `model.fit` on a NumPy array."""

    def fit(count):
        start = time.perf_counter()
        history = model.fit(images[: count * batch_size], batch_size=batch_size, epochs=1,
                            shuffle=False, verbose=0)
        return time.perf_counter() - start, history

    return _steady_seconds(fit, steps, warmup)


def bench_device(model, images, batch_size, steps, warmup):
    """`_steady_seconds` of `fit` through `DeviceImageBatches`: the batches sliced on the
    device from a copy of the images held there."""
    from keras_congeal.datasets import DeviceImageBatches

    stack = (images * 255).astype(np.uint8)  # stored as uint8, as a real set

    def fit(count):
        batches = DeviceImageBatches(stack[: count * batch_size], batch_size, shuffle=True)
        start = time.perf_counter()
        history = model.fit(batches, epochs=1, verbose=0)
        return time.perf_counter() - start, history

    return _steady_seconds(fit, steps, warmup)


def step_flops(model, batch):
    """FLOPs of one training step's forward and backward pass on `batch`
    (JAX: XLA's cost analysis of the gradient of the summed losses, compiled
    for the CPU: on a GPU, XLA counts its cuDNN convolutions as 0 FLOPs; a
    multiply-add counts 2)."""
    import jax

    cpu = jax.devices("cpu")[0]
    trainable = [jax.device_put(v.value, cpu) for v in model.trainable_variables]
    non_trainable = [jax.device_put(v.value, cpu) for v in model.non_trainable_variables]

    def loss(trainable, non_trainable, x):
        _, _, losses = model.stateless_call(trainable, non_trainable, x, return_losses=True)
        return sum(losses)

    batch = jax.device_put(batch, cpu)
    compiled = jax.jit(jax.grad(loss)).lower(trainable, non_trainable, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def matmul_rate(precision, size=8192, repeats=20):
    """Measured FLOP/s of a (size x size) matrix product on the default
    device, in bfloat16 for a mixed precision, else float32 (JAX)."""
    import jax
    import jax.numpy as jnp

    dtype = jnp.bfloat16 if "bfloat16" in precision else jnp.float32
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    product = jax.jit(lambda a: a @ a)
    product(a).block_until_ready()
    start = time.perf_counter()
    for _ in range(repeats):
        out = product(a)
    out.block_until_ready()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def run(args, log=print):
    import keras

    from keras_congeal.training import CongealSettings, build_congealer

    shape = (args.image_size, args.image_size, SIZES[args.preset][2]) if args.image_size \
        else SIZES[args.preset]
    settings = CongealSettings(preset=args.preset, objective=args.objective,
                               precision=args.precision)
    if args.transform:
        settings = settings.replace(transform=args.transform)
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    reference = rng.random(shape, dtype=np.float32)
    results = []
    device = {}
    if args.flops:
        model = build_congealer(settings, reference)
        flops = step_flops(model, rng.random((8, *shape), dtype=np.float32)) / 8
        del model
        keras.backend.clear_session()
        device = {"flops_per_image": flops,
                  "matmul_flops_per_second": matmul_rate(args.precision,
                                                         args.matmul_size)}
        log(f"{flops / 1e6:.1f} MFLOP per image per step; matrix product "
            f"{device['matmul_flops_per_second'] / 1e12:.1f} TFLOP/s")
    for batch_size in args.batch_sizes:
        count = (args.steps + args.warmup) * batch_size
        images = rng.random((count, *shape), dtype=np.float32)
        for loop in args.loops:
            model = build_congealer(settings, reference)
            entry = {"batch_size": batch_size, "loop": loop, "steps": args.steps,
                     "warmup_steps": args.warmup, "image_shape": list(shape)}
            try:
                if loop == "on-batch":
                    seconds, logs = bench_on_batch(model, images[:batch_size], args.steps,
                                                   args.warmup)
                elif loop == "device":
                    seconds, logs = bench_device(model, images, batch_size, args.steps,
                                                 args.warmup)
                else:
                    seconds, logs = bench_fit(model, images, batch_size, args.steps,
                                              args.warmup)
            except Exception as error:  # e.g. out of device memory at a large batch
                entry.update(status=f"failed: {type(error).__name__}: {str(error)[:300]}")
                log(f"batch {batch_size:5d} {loop:8s} {entry['status']}")
                results.append(entry)
                continue
            finally:
                del model
                keras.backend.clear_session()
            entry.update(
                status="ok", seconds=seconds, seconds_per_step=seconds / args.steps,
                images_per_second=args.steps * batch_size / seconds,
                final_logs=logs,
            )
            if device:
                entry["fraction_of_matmul_rate"] = (entry["images_per_second"]
                                                    * device["flops_per_image"]
                                                    / device["matmul_flops_per_second"])
            results.append(entry)
            log(f"batch {batch_size:5d} {loop:8s} {entry['images_per_second']:10.1f} img/s "
                f"({1000 * entry['seconds_per_step']:.1f} ms/step)")
    return settings, shape, results, device


def table(results):
    rows = [[r["batch_size"], r["loop"],
             common.fmt(r.get("images_per_second"), 1) if r["status"] == "ok" else r["status"],
             common.fmt(1000 * r["seconds_per_step"], 1) if r["status"] == "ok" else "-",
             common.fmt(r.get("fraction_of_matmul_rate"), 3)]
            for r in results]
    return common.markdown_table(["batch", "loop", "images/s", "ms/step", "of matmul rate"],
                                 rows)


def _parser():
    parser = common.script_parser("benchmarks.bench_training", __doc__)
    parser.add_argument("--preset", choices=sorted(SIZES), default="mnist")
    parser.add_argument("--image-size", type=int, default=None,
                        help="square image size (default: 28 mnist, 64 lfw)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per batch size")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--objective", choices=("D+C", "D", "C"), default="D+C")
    parser.add_argument("--transform", default=None,
                        help="transform family (default: CongealSettings')")
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=["on-batch", "fit"])
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16"),
                        default="float32")
    parser.add_argument("--flops", action="store_true",
                        help="count the FLOPs per image and measure the matrix product rate "
                             "(JAX)")
    parser.add_argument("--matmul-size", type=int, default=8192,
                        help="side of the matrices of --flops' rate (default 8192)")
    parser.add_argument("--output", default=None, help="JSON file to write")
    parser.add_argument("--backend-note", default=None)
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if min(args.batch_sizes) < 1 or args.steps < 1 or args.warmup < 1:
        parser.error("--batch-sizes, --steps and --warmup must be >= 1")

    log = common.log
    record = common.run_record(argv, module="benchmarks.bench_training", note=args.backend_note)
    log(f"backend {record['keras']['backend']} on {record['keras']['devices']}")
    if (args.flops or "device" in args.loops) and record["keras"]["backend"] != "jax":
        parser.error("--flops and --loops device need the jax backend")
    settings, shape, results, device = run(args, log)
    data = {
        "schema": SCHEMA, "run": record, "settings": settings.to_dict(),
        "image_shape": list(shape),
        "measured": {
            "on-batch": "train_on_batch on one batch already converted to a backend tensor; "
                        "includes Keras' per-call overhead and the losses' device-to-host copy",
            "fit": "model.fit on a host numpy array: time(fit over warmup+steps batches) - "
                   "time(fit over warmup batches); includes the data adapter and "
                   "host-to-device copies, not fit's fixed per-call cost",
            "excluded": "warm-up steps (tracing/compilation)",
        },
        "results": results,
        **device,
    }
    text = table(results)
    print(f"backend {record['keras']['backend']}, devices {record['keras']['devices']}, "
          f"objective {args.objective}, image {shape}\n\n{text}")
    data["table"] = text
    if args.output:
        common.write_json_atomic(args.output, data)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
