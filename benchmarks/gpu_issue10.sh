#!/usr/bin/env bash
# Issue 10's measurements on one GPU (JAX backend), within BUDGET seconds (default 540):
#   bash benchmarks/gpu_issue10.sh [PHASE ...]       (default: profile bench million quick)
# Phases, run in the order given:
#   profile   where a training step's device time goes (benchmarks.profile_step), D+C and
#             D, float32, batch 4096;
#   bench     training throughput of the mnist model, D+C, float32, batches 1024, 4096 and
#             16384: train_on_batch on a device batch ("on-batch") and model.fit through the
#             device-resident input path ("device"), FLOPs per image and the fraction of the
#             measured matrix-product rate (benchmarks.bench_training --flops);
#   bf16      the same for D+C in mixed_bfloat16, batch 4096;
#   convs     each convolution shape of the mnist model, forward and backward, as
#             Keras runs it (NHWC), in NCHW and as patches times a matrix
#             (benchmarks.bench_convs), float32 and bfloat16, batch 4096 (only the
#             shapes whose names contain one of $CONV_SHAPES, when set);
#   million   benchmarks.million --n 1000000 --epochs 1 (generation on every core,
#             training, alignment, per-phase host memory);
#   affnist   benchmarks.million --protocol affnist --n 100000 --epochs 2 (Figure 7);
#   quick     the quick protocol's held-out style check (1000 threes, perspective sigma
#             0.2, default settings, fit_congealer) in float32 and mixed_bfloat16;
#   million_small  the same at N = 100000 (host memory flat in N?);
#   protocol  the full MNIST protocol (benchmarks.mnist_protocols --full, N = 6000,
#             ten digits, four sigmas), in passes over the cells ($PROTOCOL_PASSES,
#             default "input,oracle,kc-D+C;kc-D,kc-C": every cell's D+C first; LSC runs
#             on a CPU), one process per digit side by side, resumed
#             from and saved to $PROTOCOL_DIR/digit<d> (default ./.gpu/full), until the
#             budget ends (each finished entry is kept; $PROTOCOL_FLAGS, e.g.
#             "--learning-rate-schedule constant", go to every process); merge the shards afterwards with
#             `python -m benchmarks.mnist_protocols --full --merge ...`;
#   stability benchmarks.stability: long trainings (N = 6000, the full protocol's
#             cells) by optimizer, one process per (cell, optimizer, training seed) side
#             by side until the budget ends: cells $STABILITY_CELLS (default the six
#             that blew up: "0:0.3 4:0.2 5:0.2 7:0.2 8:0.3 9:0.2"), optimizers
#             $STABILITY_OPTIMIZERS (default "adam adam-cosine"), seeds
#             $STABILITY_SEEDS (default "0"); files and the report into the tarball;
#   rasl      RASL (rasl-euclidean) of the quick protocol (N = 1000) on the machine's CPU
#             cores, one process per digit of $RASL_DIGITS (default: all but 3 and 8, whose
#             quick results are committed), in the background beside the other phases,
#             resumed from and saved to $RASL_DIR/digit<d> (default ./.gpu/rasl).
# Run from the repository root, with Keras importable and mnist.npz in $KERAS_CONGEAL_DATA
# (default: ./.data, a git-ignored folder). Results go to $OUT (default ./gpu-issue10):
# summary.txt and issue10.tgz (every JSON and log, the protocol shards). TINY=1: tiny
# sizes, to check this script on a CPU in a few minutes.
set -uo pipefail
OUT=${OUT:-$PWD/gpu-issue10}
mkdir -p "$OUT"
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export KERAS_CONGEAL_DATA=${KERAS_CONGEAL_DATA:-$PWD/.data}
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
PROTOCOL_DIR=${PROTOCOL_DIR:-$PWD/.gpu/full}
RASL_DIR=${RASL_DIR:-$PWD/.gpu/rasl}
PROTOCOL_PASSES=${PROTOCOL_PASSES:-input,oracle,kc-D+C;kc-D,kc-C}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ "${TINY:-0}" = 1 ]; then
  BATCHES="8 16"; BF16_BATCH=16; PROFILE_BATCH=16; STEPS=2; WARMUP=1; MATMUL=128; N=600
  ALIGN_BATCH=256; MILLION_BATCH=64; AFF_N=300; QUICK_N=64; QUICK_EPOCHS=1; FULL_N=40
  FULL_EPOCHS="--epochs 1"; RASL_N=20; BUDGET=${BUDGET:-900}; DIGITS=${DIGITS:-"3 8"}; RASL_DIGITS=${RASL_DIGITS:-3}
else
  BATCHES="1024 4096 16384"; BF16_BATCH=4096; PROFILE_BATCH=4096; STEPS=30; WARMUP=3
  MATMUL=8192; N=1000000; ALIGN_BATCH=8192; MILLION_BATCH=1024; AFF_N=100000; QUICK_N=1000
  QUICK_EPOCHS=30; FULL_N=6000; FULL_EPOCHS=""; RASL_N=1000; BUDGET=${BUDGET:-540}
  DIGITS=${DIGITS:-"0 1 2 3 4 5 6 7 8 9"}; RASL_DIGITS=${RASL_DIGITS:-"0 1 2 4 5 6 7 9"}
fi
t0=$(date +%s)
summary="$work/summary.txt"
{ echo "gpu_issue10.sh $* at $(git describe --always --dirty 2>/dev/null || echo '?'), $(date -u)";
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null
  echo "$(nproc) cores"
  "$PY" -c "import keras, jax; print('keras', keras.__version__, 'jax', jax.__version__, jax.devices())"
} > "$summary" 2>&1

left() { echo $(( BUDGET - ($(date +%s) - t0) )); }

# step NAME LIMIT_S COMMAND...: runs COMMAND with its output in NAME.log, within LIMIT_S
# and within what is left of BUDGET; skipped when less than 20 s are left.
step() {
  local name=$1 limit=$2 rest
  shift 2
  rest=$(left)
  if [ "$rest" -lt 20 ]; then echo "$name: skipped (time budget spent)" >> "$summary"; return; fi
  [ "$limit" -gt "$rest" ] && limit=$rest
  local start=$(date +%s)
  timeout "$limit" "$@" > "$work/$name.log" 2>&1
  echo "$name: exit $? in $(( $(date +%s) - start )) s" >> "$summary"
}

bench() {  # bench NAME LIMIT OBJECTIVE PRECISION BATCHES
  step "$1" "$2" "$PY" -m benchmarks.bench_training --preset mnist --objective "$3" \
    --precision "$4" --batch-sizes $5 --steps "$STEPS" --warmup "$WARMUP" \
    --loops on-batch device --flops --matmul-size "$MATMUL" --output "$work/$1.json"
}

background=()
phase_rasl() {  # in the background until the budget ends
  local d rest=$(( $(left) - 15 ))
  for d in $RASL_DIGITS; do
    mkdir -p "$RASL_DIR/digit$d"
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 timeout "$rest" "$PY" -m benchmarks.mnist_protocols \
      --quick --n "$RASL_N" --digits "$d" --methods rasl-euclidean --resume \
      --output-dir "$RASL_DIR/digit$d" > "$work/rasl_digit$d.log" 2>&1 &
    background+=($!)
  done
  echo "rasl: started digits $RASL_DIGITS in the background" >> "$summary"
}

phase_profile() {
  step profile_dc 120 "$PY" -m benchmarks.profile_step --objective D+C --batch-size \
    "$PROFILE_BATCH" --steps 10 --output "$work/profile_dc.json"
  step profile_d 90 "$PY" -m benchmarks.profile_step --objective D --batch-size \
    "$PROFILE_BATCH" --steps 10 --output "$work/profile_d.json"
}

phase_convs() {
  step convs 150 "$PY" -m benchmarks.bench_convs --batch-size "$PROFILE_BATCH" \
    --steps "$STEPS" --warmup "$WARMUP" ${CONV_SHAPES:+--shapes $CONV_SHAPES} \
    --output "$work/convs.json"
}

phase_bench() { bench bench_dc_fp32 200 D+C float32 "$BATCHES"; }
phase_bf16() { bench bench_dc_bf16 100 D+C mixed_bfloat16 "$BF16_BATCH"; }

phase_million() {
  step million 200 "$PY" -m benchmarks.million --n "$N" --epochs 1 --batch-size \
    "$MILLION_BATCH" --align-batch-size "$ALIGN_BATCH" --output "$work/million.json"
}

phase_million_small() {  # the same at a tenth of the size: is the host memory flat in N?
  step million_small 120 "$PY" -m benchmarks.million --n $(( N / 10 )) --epochs 1 --batch-size \
    "$MILLION_BATCH" --align-batch-size "$ALIGN_BATCH" --output "$work/million_small.json"
}

phase_affnist() {
  step affnist 150 "$PY" -m benchmarks.million --protocol affnist --n "$AFF_N" --epochs 2 \
    --batch-size "$MILLION_BATCH" --align-batch-size "$ALIGN_BATCH" \
    --output "$work/affnist.json"
}

phase_quick() {  # the quick protocol, float32 and mixed_bfloat16 side by side (accuracy)
  step quick_data 30 "$PY" -m keras_congeal.data mnist --digit 3 --n "$QUICK_N" --sigma 0.2 \
    --output "$work/quick.npy"
  step quick 100 bash -c "'$PY' -m benchmarks.fit_check '$work/quick.npy' float32 \
    $QUICK_EPOCHS > '$work/quick_float32.json' & '$PY' -m benchmarks.fit_check \
    '$work/quick.npy' mixed_bfloat16 $QUICK_EPOCHS > '$work/quick_mixed_bfloat16.json' & wait"
}

phase_stability() {  # one process per run, side by side, until the budget ends
  local cell d s o t pids=() rest=$(( $(left) - 15 )) start=$(date +%s)
  mkdir -p "$work/stability"
  for cell in ${STABILITY_CELLS:-0:0.3 4:0.2 5:0.2 7:0.2 8:0.3 9:0.2}; do
    d=${cell%%:*}; s=${cell#*:}
    for o in ${STABILITY_OPTIMIZERS:-adam adam-cosine}; do
      for t in ${STABILITY_SEEDS:-0}; do
        timeout "$rest" "$PY" -m benchmarks.stability --digits "$d" --sigmas "$s" \
          --optimizers "$o" --train-seeds "$t" --n "$FULL_N" $FULL_EPOCHS \
          --output-dir "$work/stability" > "$work/stability_d${d}_s${s}_${o}_${t}.log" 2>&1 &
        pids+=($!)
      done
    done
  done
  wait "${pids[@]}"
  echo "stability: ${#pids[@]} runs for $(( $(date +%s) - start )) s" >> "$summary"
  "$PY" -m benchmarks.stability --report --output-dir "$work/stability" >> "$summary" 2>&1
}

phase_protocol() {  # one process per digit and pass until the budget ends
  local d pids=() rest=$(( $(left) - 15 ))
  local start=$(date +%s)
  for d in $DIGITS; do
    mkdir -p "$PROTOCOL_DIR/digit$d"
    timeout "$rest" bash -c 'IFS=";"; for methods in $1; do IFS=" "
      "$2" -m benchmarks.mnist_protocols --full --n "$3" $4 --digits "$5" \
        --methods ${methods//,/ } --resume --output-dir "$6"; done' _ "$PROTOCOL_PASSES" \
      "$PY" "$FULL_N" "$FULL_EPOCHS ${PROTOCOL_FLAGS:-}" "$d" "$PROTOCOL_DIR/digit$d" \
      > "$work/protocol_digit$d.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  echo "protocol: digits $DIGITS for $(( $(date +%s) - start )) s" >> "$summary"
}

for phase in "${@:-profile bench million quick}"; do
  for p in $phase; do "phase_$p"; done
done
[ ${#background[@]} -gt 0 ] && wait "${background[@]}"

"$PY" -m benchmarks.gpu_summary "$work" >> "$summary" 2>&1
echo "total $(( $(date +%s) - t0 )) s" >> "$summary"
cp "$summary" "$OUT/summary.txt"
for dir in "$PROTOCOL_DIR" "$RASL_DIR"; do
  [ -d "$dir" ] && cp -r "$dir" "$work/$(basename "$dir")"
done
tar -czf "$OUT/issue10.tgz" -C "$work" .
cat "$OUT/summary.txt"
