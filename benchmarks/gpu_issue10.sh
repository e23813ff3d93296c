#!/usr/bin/env bash
# Issue 10's measurements on one GPU (JAX backend), in at most 9 minutes:
#   1. training throughput of the mnist model, D+C and D, batch 1024 and 4096, float32
#      and mixed_bfloat16: train_on_batch on a device batch ("on-batch") and model.fit
#      through the device-resident input path ("device"), with the FLOPs per image
#      (XLA cost analysis) and the fraction of the measured matrix-product rate;
#      the lfw model's FLOPs per image;
#   2. benchmarks.million --n 1000000 --epochs 1 --batch-size 1024 (generation on every
#      core, training through the device-resident path, alignment, peak host memory);
#   3. the quick protocol (1000 threes, perspective sigma 0.2, the default settings,
#      fit_congealer) in float32 and in mixed_bfloat16: APSNR, ink kept, scale.
# Run from the repository root, with Keras importable and mnist.npz in $KERAS_CONGEAL_DATA
# (default: ./.data, a git-ignored folder):
#   bash benchmarks/gpu_issue10.sh
# Results go to $OUT (default ./gpu-issue10): summary.txt and issue10.tgz (every JSON
# and log). TINY=1: tiny sizes, to check this script on a CPU in a minute or two.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-issue10}
mkdir -p "$OUT"
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export KERAS_CONGEAL_DATA=${KERAS_CONGEAL_DATA:-$PWD/.data}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "${TINY:-0}" = 1 ]; then
  BATCHES="8 16"; STEPS=2; WARMUP=1; MATMUL=128; N=600; ALIGN_BATCH=256
  MILLION_BATCH=64; QUICK_N=64; QUICK_EPOCHS=1; BUDGET=900; LFW_BATCH=4
else
  BATCHES="1024 4096"; STEPS=50; WARMUP=5; MATMUL=8192; N=1000000; ALIGN_BATCH=8192
  MILLION_BATCH=1024; QUICK_N=1000; QUICK_EPOCHS=30; BUDGET=530; LFW_BATCH=256
fi
t0=$(date +%s)
summary="$work/summary.txt"
{ echo "gpu_issue10.sh at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u)";
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null;
  "$PY" -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())"
} > "$summary" 2>&1

# step NAME LIMIT_S COMMAND...: runs COMMAND with its output in NAME.log, within LIMIT_S
# and within what is left of BUDGET; skipped when less than 20 s are left.
step() {
  local name=$1 limit=$2 left
  shift 2
  left=$(( BUDGET - ($(date +%s) - t0) ))
  if [ "$left" -lt 20 ]; then echo "$name: skipped (time budget spent)" >> "$summary"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start=$(date +%s)
  timeout "$limit" "$@" > "$work/$name.log" 2>&1
  echo "$name: exit $? in $(( $(date +%s) - start )) s" >> "$summary"
}

bench() {  # bench NAME LIMIT OBJECTIVE PRECISION LOOPS...
  local name=$1 limit=$2 objective=$3 precision=$4
  shift 4
  step "$name" "$limit" "$PY" -m benchmarks.bench_training --preset mnist --objective "$objective" \
    --precision "$precision" --batch-sizes $BATCHES --steps "$STEPS" --warmup "$WARMUP" \
    --loops "$@" --flops --matmul-size "$MATMUL" --output "$work/$name.json"
}

bench bench_dc_fp32 110 D+C float32 on-batch device
bench bench_dc_bf16 110 D+C mixed_bfloat16 on-batch device
step million 170 "$PY" -m benchmarks.million --n "$N" --epochs 1 --batch-size "$MILLION_BATCH" \
  --align-batch-size "$ALIGN_BATCH" --output "$work/million.json"

# The quick protocol, float32 and mixed_bfloat16 side by side (accuracy, not speed).
step quick_data 30 "$PY" -m keras_congeal.data mnist --digit 3 --n "$QUICK_N" --sigma 0.2 \
  --output "$work/quick.npy"
# fit_congealer (the congeal command's training path) and AlignmentMeter, without the
# command's figures (PIL may be missing on the GPU machine).
cat > "$work/quick.py" <<'PYEOF'
import json, sys, time
import numpy as np
from keras_congeal.datasets import as_float_images
from keras_congeal.metrics import AlignmentMeter
from keras_congeal.training import CongealSettings, fit_congealer
images, precision, epochs = np.load(sys.argv[1]), sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
model, _ = fit_congealer(images, CongealSettings(precision=precision, epochs=epochs), verbose=0)
seconds = time.perf_counter() - start
x = as_float_images(images, 255.0)
result = model.align(x, batch_size=1024)
meter = AlignmentMeter(data_range=1.0)
meter.update(x, result["aligned"], result["transforms"])
print(json.dumps({"precision": precision, "train_seconds": seconds, **meter.summary()}))
PYEOF
step quick 90 bash -c "'$PY' '$work/quick.py' '$work/quick.npy' float32 $QUICK_EPOCHS \
  > '$work/quick_float32.json' & '$PY' '$work/quick.py' '$work/quick.npy' mixed_bfloat16 \
  $QUICK_EPOCHS > '$work/quick_mixed_bfloat16.json' & wait"

bench bench_d_fp32 50 D float32 on-batch
bench bench_d_bf16 50 D mixed_bfloat16 on-batch
step lfw_flops 50 "$PY" -m benchmarks.bench_training --preset lfw --batch-sizes "$LFW_BATCH" --steps 10 \
  --warmup 2 --loops on-batch --flops --matmul-size "$MATMUL" --output "$work/bench_lfw.json"

"$PY" - "$work" >> "$summary" 2>&1 <<'PYEOF'
import json, sys
from pathlib import Path
work = Path(sys.argv[1])
for path in sorted(work.glob("bench_*.json")):
    data = json.loads(path.read_text())
    print(f"{path.stem}: {data.get('flops_per_image', 0) / 1e6:.1f} MFLOP/image, matmul "
          f"{data.get('matmul_flops_per_second', 0) / 1e12:.1f} TFLOP/s")
    for r in data["results"]:
        if r["status"] == "ok":
            print(f"  batch {r['batch_size']} {r['loop']}: {r['images_per_second']:.0f} img/s, "
                  f"{r.get('fraction_of_matmul_rate', 0):.3f} of matmul rate")
        else:
            print(f"  batch {r['batch_size']} {r['loop']}: {r['status']}")
if (work / "million.json").exists():
    m = json.loads((work / "million.json").read_text())
    s = m["summary"]
    print(f"million: n {m['config']['n']}, generate {m['generate_seconds']:.1f} s, train "
          f"{m['train_seconds']:.1f} s ({m['train_images_per_second'] or 0:.0f} img/s), align "
          f"{m['align_seconds']:.1f} s ({m['align_images_per_second']:.0f} img/s; metrics "
          f"{m['align_metrics_seconds']:.1f} s), train+align {m['train_plus_align_seconds']:.1f} s, "
          f"APSNR {s['apsnr_before']:.2f} -> {s['apsnr_after']:.2f}, ink {s['ink_kept']:.3f}, "
          f"scale {s['content_scale_median']:.3f}, peak host memory "
          f"{m['memory']['peak_bytes'] / 2**30:.2f} GiB")
for p in ("float32", "mixed_bfloat16"):
    path = work / f"quick_{p}.json"
    if path.exists() and path.stat().st_size:
        r = json.loads(path.read_text().strip().splitlines()[-1])
        print(f"quick {p}: APSNR {r['apsnr_before']:.2f} -> {r['apsnr_after']:.3f} dB, ink "
              f"{r['ink_kept']:.3f}, scale {r['content_scale_median']:.3f}, train "
              f"{r['train_seconds']:.1f} s")
PYEOF
echo "total $(( $(date +%s) - t0 )) s" >> "$summary"
cp "$summary" "$OUT/summary.txt"
tar -czf "$OUT/issue10.tgz" -C "$work" .
cat "$OUT/summary.txt"
