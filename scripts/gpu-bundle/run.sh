#!/usr/bin/env bash
# The GPU bundle's one command (scripts/gpu-bundle.sh made this folder). On the GPU machine:
#     OUT=<results dir> ./run.sh                 (DEVICE=cuda by default)
# Here, as the bundle's own check:   DEVICE=cpu TORCH_LIB=<libtorch 2.11 lib dir> ./run.sh
#
# 1. STUDY_A with the fixture model on the CPU in f32 and (DEVICE=cuda) on the GPU in f32,
#    f16 and bf16: worst error of every output against CPU f32 and against the reference
#    predictions computed by upstream's Python code.
# 2. The full-size demo model, made here (`model demo --size full`), timed on the GPU per
#    stage (RUNS times in f32, once in f16 and bf16), with peak GPU memory from nvidia-smi.
# 3. LIME on the full-size model (EXPLAIN_SAMPLES=1000, in batches of each of
#    EXPLAIN_BATCHES="50 250"): labels under float16 autocast (upstream's way), and in
#    float32 once; seconds per 1000 samples and the top tokens of each.
# 4. $OUT/summary.json (machine, errors, timings) and $OUT/run.log (everything printed).
# Exits non-zero when CPU f32 is off the reference, or GPU f32 off CPU f32, by > 1e-4.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEVICE="${DEVICE:-cuda}"
RUNS="${RUNS:-3}"
OUT="${OUT:-$here/out}"
TORCH_LIB="${TORCH_LIB:-/opt/torch/.venv/lib/python3.12/site-packages/torch/lib}"
mkdir -p "$OUT"
exec > >(tee "$OUT/run.log") 2>&1
if [ ! -e "$TORCH_LIB/libtorch.so" ]; then
  echo "run.sh: no libtorch.so in $TORCH_LIB (set TORCH_LIB)"
  exit 2
fi
export LD_LIBRARY_PATH="$TORCH_LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
py=""
for p in python3 /opt/torch/.venv/bin/python; do
  command -v "$p" >/dev/null && { py="$p"; break; }
done
[ -n "$py" ] || { echo "run.sh: no python3"; exit 2; }
bin="$here/prima-node"
work="$(mktemp -d "${TMPDIR:-/tmp}/prima-gpu-bundle.XXXXXX")"
sampler=""
cleanup() {
  [ -z "$sampler" ] || kill "$sampler" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
now() { date +%s.%N; }

echo "== machine"
uname -srm
echo "cpus: $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
echo "libtorch: $TORCH_LIB ($(sed -n "s/^__version__ = '\(.*\)'/\1/p" "$TORCH_LIB/../version.py" 2>/dev/null))"
"$bin" --version
echo "device: $DEVICE"

tar xzf "$here/study-a.tar.gz" -C "$work"
tar xzf "$here/fixture-model.tar.gz" -C "$work"

# infer NAME MODEL DEVICE PRECISION [ARGS...]: one study, its predictions and run record
# under $work/NAME, its start and end (model load included) in $work/NAME.wall.
infer() {
  local name=$1 model=$2 dev=$3 prec=$4 t0
  shift 4
  t0=$(now)
  "$bin" infer --model "$work/$model" --out "$work/$name" --device "$dev" --precision "$prec" \
    --slice-order filename "$@" "$work/STUDY_A" 2>&1 | sed "s/^/[$name] /"
  echo "$t0 $(now)" > "$work/$name.wall"
}

echo "== STUDY_A, fixture model"
runs=(cpu-f32)
infer cpu-f32 fixture-model cpu f32
if [ "$DEVICE" != cpu ]; then
  for p in f32 f16 bf16; do
    infer "gpu-$p" fixture-model "$DEVICE" "$p"
    runs+=("gpu-$p")
  done
fi

echo "== full-size demo model"
"$bin" model demo --size full --seed 1 --out "$work/full-model" 2>&1 | tail -n 2
full=()
if [ "$DEVICE" != cpu ] || [ -n "${FULL_ON_CPU:-}" ]; then
  if [ "$DEVICE" != cpu ] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 50 > "$work/gpu-mem.txt" &
    sampler=$!
    sleep 1
  fi
  for r in $(seq 1 "$RUNS"); do
    infer "full-f32-$r" full-model "$DEVICE" f32
    full+=("full-f32-$r")
  done
  for p in f16 bf16; do
    [ "$DEVICE" != cpu ] || break
    infer "full-$p" full-model "$DEVICE" "$p"
    full+=("full-$p")
  done
  lime=(--explain --explain-samples "${EXPLAIN_SAMPLES:-1000}")
  for b in ${EXPLAIN_BATCHES:-50 250}; do
    infer "full-explain-autocast-b$b" full-model "$DEVICE" f32 "${lime[@]}" --explain-batch "$b"
    full+=("full-explain-autocast-b$b")
  done
  if [ "$DEVICE" != cpu ]; then
    infer full-explain-f32-b250 full-model "$DEVICE" f32 "${lime[@]}" --explain-batch 250 --explain-no-autocast
    full+=(full-explain-f32-b250)
  fi
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
    sampler=""
  fi
fi

echo "== summary"
"$py" "$here/summary.py" "$work" "$OUT/summary.json" "$here/STUDY_A_predictions.json" \
  "${runs[*]}" "${full[*]}" "$DEVICE"
