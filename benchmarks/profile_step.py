"""Where a training step's time goes (JAX): device time per XLA op and per layer.

Builds the package's model (`training.build_congealer`, `CongealSettings`
defaults except `--objective`/`--precision`), runs `--warmup` steps of
`train_on_batch` on one batch held on the device, then traces `--steps` more
with `jax.profiler` and sums the duration of every op of the compiled training
step (GPU kernels on a GPU; the XLA CPU runtime's thunks on a CPU). Each op is
named by the layer it comes from (the op's `op_name` metadata from XLA's
optimised HLO, which carries Keras' name scopes) and by its kind (convolution,
gather, fusion, ...). Written: a table per op, per layer scope and per kind,
milliseconds per step, and the JSON with every op.

Usage:

    KERAS_BACKEND=jax python -m benchmarks.profile_step --batch-size 4096 \\
        --output benchmarks/results/profile_step_gpu.json
"""

import collections
import gzip
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import common

SCHEMA = "keras_congeal.profile_step/1"
SIZES = {"mnist": (28, 28, 1), "lfw": (64, 64, 3)}
# `name = shape opcode(...)..., metadata={op_name="..."`, one instruction per line.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*\S.*?\s(?P<opcode>[\w\-]+)\("
    r"(?:.*?custom_call_target=\"(?P<target>[^\"]+)\")?"
    r"(?:.*?metadata=\{[^}]*?op_name=\"(?P<op_name>[^\"]*)\")?"
)
# Transformations JAX writes around a name scope: `jvp(...)`, `transpose(...)`.
_WRAPPER = re.compile(r"^(?:jit|jvp|transpose|vmap|pjit|remat|checkpoint)\((.*)\)$")


def hlo_ops(dump_dir, module):
    """`{instruction name: (kind, op_name)}` of the optimised HLO module whose
    name contains `module`, from an `--xla_dump_to` folder."""
    candidates = [
        p
        for p in Path(dump_dir).glob("*after_optimizations.txt")
        if module in p.name and "buffer" not in p.name
    ]
    if not candidates:
        return {}
    path = max(candidates, key=lambda p: p.stat().st_size)
    ops = {}
    for line in path.read_text().splitlines():
        match = _INSTRUCTION.match(line)
        if match:
            kind = match["target"] or match["opcode"]
            ops[match["name"]] = (kind, match["op_name"] or "")
    return ops


def scope_of(op_name, depth):
    """The first `depth` Keras name scopes of an XLA `op_name` (JAX's
    transformation wrappers removed): `jit(f)/jvp(congealer)/destnet/stage0/...`
    -> `destnet/stage0`. The direction (`bwd` for ops of a `transpose(...)`,
    the gradient) is kept as a suffix."""
    parts = op_name.split("/")
    backward = any(p.startswith("transpose(") for p in parts)
    names = []
    for part in parts:
        while (match := _WRAPPER.match(part)) is not None:
            part = match[1]
        if part and not part.startswith("jit(") and part not in ("train_step", "compute_loss"):
            names.append(part)
    names = names[:-1] or names  # the last part is the primitive
    scope = "/".join(names[:depth]) or "(other)"
    return f"{scope} [bwd]" if backward else scope


def op_kind(name, kind):
    """A readable kind: convolution, gather, scatter, matmul, fusion (with what
    XLA's name says it fuses), copy, reduce..."""
    if "conv" in kind:
        return "convolution (" + kind.replace("__cudnn$", "") + ")"
    if kind in ("fusion", "custom-call"):
        base = re.sub(r"[.\d]+$", "", name)
        return f"{kind} ({base})"
    return kind


def device_op_times(trace_path, module):
    """`{hlo_op: total microseconds}` of the ops of `module` in a JAX
    perfetto trace: device (GPU) events when there are any, else host ones."""
    with gzip.open(trace_path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    process_names = {
        e["pid"]: e["args"].get("name", "")
        for e in events
        if e.get("ph") == "M" and e.get("name") == "process_name"
    }
    device_pids = {pid for pid, name in process_names.items() if "/device:" in name}
    times = collections.Counter()
    counts = collections.Counter()
    for e in events:
        args = e.get("args") or {}
        if e.get("ph") != "X" or "hlo_op" not in args or e["name"].startswith("end:"):
            continue
        if device_pids and e["pid"] not in device_pids:
            continue
        if module not in args.get("hlo_module", ""):
            continue
        times[args["hlo_op"]] += float(e["dur"])
        counts[args["hlo_op"]] += 1
    return times, counts, bool(device_pids)


def profile(args, dump_dir, trace_dir):
    import jax
    import keras

    from keras_congeal.training import CongealSettings, build_congealer

    shape = SIZES[args.preset]
    settings = CongealSettings(preset=args.preset, objective=args.objective,
                               precision=args.precision)
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = build_congealer(settings, rng.random(shape, dtype=np.float32))
    batch = keras.ops.convert_to_tensor(rng.random((args.batch_size, *shape), dtype=np.float32))
    for _ in range(args.warmup):
        model.train_on_batch(batch)
    start = time.perf_counter()
    for _ in range(args.steps):
        model.train_on_batch(batch)
    wall = (time.perf_counter() - start) / args.steps
    with jax.profiler.trace(str(trace_dir), create_perfetto_trace=True):
        for _ in range(args.steps):
            model.train_on_batch(batch)
    traces = sorted(Path(trace_dir).glob("**/*.trace.json.gz"))
    if not traces:
        raise RuntimeError(f"jax.profiler wrote no trace under {trace_dir}")
    times, counts, on_device = device_op_times(traces[-1], args.module)
    ops = hlo_ops(dump_dir, args.module)
    rows = []
    for name, micros in times.most_common():
        kind, op_name = ops.get(name, ("?", ""))
        rows.append({
            "op": name, "kind": op_kind(name, kind), "op_name": op_name,
            "scope": scope_of(op_name, args.depth),
            "ms_per_step": micros / 1000 / args.steps,
            "launches_per_step": counts[name] / args.steps,
        })
    return {"wall_ms_per_step": 1000 * wall, "on_device": on_device,
            "images_per_second": args.batch_size / wall, "ops": rows}


def grouped(rows, key):
    totals = collections.defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        totals[r[key]][0] += r["ms_per_step"]
        totals[r[key]][1] += r["launches_per_step"]
    return sorted(totals.items(), key=lambda item: -item[1][0])


def tables(result, top):
    rows = result["ops"]
    total = sum(r["ms_per_step"] for r in rows) or 1.0
    out = [f"wall {result['wall_ms_per_step']:.2f} ms/step "
           f"({result['images_per_second']:.0f} images/s); "
           f"{'device' if result['on_device'] else 'host'} op time {total:.2f} ms/step"]
    for key, title in (("scope", "layer scope"), ("kind", "op kind")):
        out.append("\n" + common.markdown_table(
            [title, "ms/step", "share", "launches/step"],
            [[name, common.fmt(ms, 3), common.fmt(ms / total, 3), common.fmt(n, 0)]
             for name, (ms, n) in grouped(rows, key)]))
    out.append("\n" + common.markdown_table(
        ["op", "kind", "scope", "ms/step", "share"],
        [[r["op"], r["kind"], r["scope"], common.fmt(r["ms_per_step"], 3),
          common.fmt(r["ms_per_step"] / total, 3)] for r in rows[:top]]))
    return "\n".join(out)


def _parser():
    parser = common.script_parser("benchmarks.profile_step", __doc__)
    parser.add_argument("--preset", choices=sorted(SIZES), default="mnist")
    parser.add_argument("--objective", choices=("D+C", "D", "C"), default="D+C")
    parser.add_argument("--precision", choices=("float32", "mixed_bfloat16"),
                        default="float32")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10, help="traced steps")
    parser.add_argument("--warmup", type=int, default=3, help="untraced steps first")
    parser.add_argument("--depth", type=int, default=3, help="name scopes per layer group")
    parser.add_argument("--top", type=int, default=40, help="ops in the per-op table")
    parser.add_argument("--module", default="train_step",
                        help="name of the compiled module to profile (default train_step)")
    parser.add_argument("--output", default=None, help="JSON file to write")
    return parser


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if min(args.batch_size, args.steps, args.warmup, args.depth) < 1:
        parser.error("--batch-size, --steps, --warmup and --depth must be >= 1")
    if os.environ.get("KERAS_BACKEND", "jax") != "jax":
        parser.error("profile_step needs KERAS_BACKEND=jax")
    os.environ["KERAS_BACKEND"] = "jax"
    with tempfile.TemporaryDirectory() as work:
        dump_dir, trace_dir = Path(work, "hlo"), Path(work, "trace")
        # Before JAX starts: XLA reads its flags once.
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_dump_to={dump_dir}"
                                   " --xla_dump_hlo_as_text"
                                   f" --xla_dump_hlo_module_re=.*{args.module}.*").strip()
        record = common.run_record(argv, module="benchmarks.profile_step")
        common.log(f"backend {record['keras']['backend']} on {record['keras']['devices']}")
        result = profile(args, dump_dir, trace_dir)
    text = tables(result, args.top)
    print(text)
    if args.output:
        common.write_json_atomic(args.output, {
            "schema": SCHEMA, "run": record, "preset": args.preset,
            "objective": args.objective, "precision": args.precision,
            "batch_size": args.batch_size, "steps": args.steps, **result, "table": text})
        common.log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
