"""Inference speed of an exported aligner: onnxruntime against Keras, one run.

The model (a trained `.keras` Congealer, or a fresh one of `--preset`) is
exported with `keras_congeal.export.export_onnx` (one `GridSample` per warp,
verified against Keras before it is written) to a temporary file, then the
same batch of images is aligned by:

* `onnxruntime`: `InferenceSession.run` with the chosen execution providers
  (CUDA first where it loads, else CPU; the providers actually used are
  recorded, as onnxruntime silently falls back to CPU);
* `keras align`: `Congealer.align(batch)`, the package's Python API
  (aligner + final warp + transforms to NumPy, run eagerly per batch);
* `keras predict`: `Congealer.predict(batch)`, Keras' compiled predict loop
  over the whole model's `call` (which also computes the per-image loss terms,
  and the auto-encoder when the model's objective has `C`; the ONNX graph has
  the aligner and warp only).

Each is timed per batch after warm-up calls; reported: median and 90th
percentile latency per batch and images per second (batch / mean time).
A fresh `--preset` model aligns by its initial (identity) weights: its cost is
that of a trained one. The export needs the TensorFlow backend, which this
command selects when Keras is not imported yet.

Usage:

    python -m benchmarks.bench_onnx --preset mnist --batch 128 \\
        --output benchmarks/results/bench_onnx_cpu.json
    python -m benchmarks.bench_onnx --model congealer.keras --batch 256 --any-size
"""

import os
import sys
import tempfile
import time

import numpy as np

from benchmarks import common

SCHEMA = "keras_congeal.bench_onnx/1"


def _time(function, repeats, warmup):
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return np.array(times)


def _summary(name, times, batch, extra=None):
    return {
        "runtime": name, "batch": batch, "repeats": len(times),
        "latency_ms_median": float(1000 * np.median(times)),
        "latency_ms_p90": float(1000 * np.percentile(times, 90)),
        "latency_ms_mean": float(1000 * np.mean(times)),
        "images_per_second": float(batch / np.mean(times)),
        **(extra or {}),
    }


def choose_providers(requested):
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise ValueError(f"providers {missing} are not available; onnxruntime has "
                             f"{available}")
        return requested
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def run(args, log=print):
    import keras
    import onnxruntime as ort

    from keras_congeal.export import export_onnx, load_congealer

    if args.model:
        congealer = load_congealer(args.model)
        source = args.model
    else:
        from keras_congeal.training import CongealSettings, build_congealer

        keras.utils.set_random_seed(0)
        shape = {"mnist": (28, 28, 1), "lfw": (64, 64, 3)}[args.preset]
        reference = np.random.default_rng(0).random(shape, dtype=np.float32)
        settings = CongealSettings(preset=args.preset, objective=args.objective)
        congealer = build_congealer(settings, reference)
        source = f"preset {args.preset}, objective {args.objective}, initial weights"
    height, width, channels = congealer.image_shape
    rng = np.random.default_rng(1)
    batch = rng.random((args.batch, height, width, channels), dtype=np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "aligner.onnx")
        start = time.perf_counter()
        exported = export_onnx(congealer, path, any_size=args.any_size)
        export_seconds = time.perf_counter() - start
        providers = choose_providers(args.providers)
        options = ort.SessionOptions()
        if args.threads:
            options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(path, sess_options=options, providers=providers)
        used = session.get_providers()
        log(f"exported in {export_seconds:.1f} s ({exported.num_nodes} nodes); onnxruntime "
            f"providers {used}")
        results = []
        times = _time(lambda: session.run(None, {"images": batch}), args.repeats, args.warmup)
        results.append(_summary("onnxruntime", times, args.batch,
                                {"providers": used, "size": [height, width]}))
        if args.any_size:
            big = rng.random((args.batch, 2 * height, 2 * width, channels), dtype=np.float32)
            times = _time(lambda: session.run(None, {"images": big}), args.repeats, args.warmup)
            results.append(_summary("onnxruntime", times, args.batch,
                                    {"providers": used, "size": [2 * height, 2 * width]}))
    times = _time(lambda: congealer.align(batch, batch_size=args.batch), args.repeats,
                  args.warmup)
    results.append(_summary("keras align", times, args.batch, {"size": [height, width]}))
    times = _time(lambda: congealer.predict(batch, batch_size=args.batch, verbose=0),
                  args.repeats, args.warmup)
    results.append(_summary("keras predict", times, args.batch, {"size": [height, width]}))
    export_info = {
        "seconds": export_seconds, "num_nodes": exported.num_nodes,
        "op_counts": exported.op_counts, "opset": exported.opset,
        "any_size": exported.any_size, "parity": exported.parity,
    }
    return source, export_info, results


def table(results):
    rows = [[r["runtime"], "x".join(map(str, r["size"])), r["batch"],
             common.fmt(r["latency_ms_median"]), common.fmt(r["latency_ms_p90"]),
             common.fmt(r["images_per_second"], 0), ",".join(r.get("providers", ["-"]))]
            for r in results]
    return common.markdown_table(
        ["runtime", "size", "batch", "median ms/batch", "p90 ms/batch", "images/s",
         "providers"], rows)


def _parser():
    parser = common.script_parser("benchmarks.bench_onnx", __doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", help="a trained Congealer (.keras)")
    source.add_argument("--preset", choices=("mnist", "lfw"), default="mnist",
                        help="a fresh model of this preset (default mnist)")
    parser.add_argument("--objective", choices=("D+C", "D", "C"), default="D",
                        help="objective of the --preset model (default D: predict then runs "
                             "no auto-encoder, like the ONNX graph)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--any-size", action="store_true",
                        help="export with dynamic height/width; also time 2x-size images")
    parser.add_argument("--providers", nargs="+", default=None,
                        help="onnxruntime providers, most preferred first (default: CUDA "
                             "then CPU where CUDA is available, else CPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: its own)")
    parser.add_argument("--output", default=None, help="JSON file to write")
    parser.add_argument("--backend-note", default=None)
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch and --repeats must be >= 1, --warmup >= 0")
    if "keras" not in sys.modules:
        # tf2onnx converts TensorFlow graphs: select TensorFlow before Keras loads.
        os.environ["KERAS_BACKEND"] = "tensorflow"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.WARNING)

    log = common.log
    record = common.run_record(argv, module="benchmarks.bench_onnx", note=args.backend_note)
    try:
        source, export_info, results = run(args, log)
    except ValueError as error:
        parser.error(str(error))
    text = table(results)
    print(f"model: {source}\n\n{text}")
    if args.output:
        common.write_json_atomic(args.output, {
            "schema": SCHEMA, "run": record, "model": source, "export": export_info,
            "measured": {
                "onnxruntime": "InferenceSession.run on one batch (host arrays in and out)",
                "keras align": "Congealer.align(batch): eager aligner + warp + transforms",
                "keras predict": "Congealer.predict: compiled predict of the model's call "
                                 "(loss terms too; the auto-encoder when the objective has C)",
                "excluded": "warm-up calls",
            },
            "results": results, "table": text,
        })
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
