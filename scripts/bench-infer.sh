#!/usr/bin/env bash
# Benchmark (not a test): full-size demo model on STUDY_A with 2 threads.
# Prints per-stage seconds (from <out>/STUDY_A_run.json), tokens encoded, peak RSS, and the
# ratio of the model stages to the reference full-size cost in
# models/fullsize_reference.json (VQ-VAE s/token × 2752 tokens + HierViT).
# Skeleton: assumes `prima-node model demo` and `prima-node infer` as in issue 3.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=/dev/null
source "$root/scripts/env.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"
fx="${PRIMA_REFERENCE_DIR}"
work="${BENCH_DIR:-${TMPDIR:-/tmp}/prima-bench}"
threads="${THREADS:-2}"
mkdir -p "$work"
cargo build --release --bin prima-node
bin="$CARGO_TARGET_DIR/release/prima-node"
model="$work/demo-full"
if [ ! -f "$model/manifest.json" ]; then
    /usr/bin/time -f "demo model written in %e s, peak RSS %M KiB" \
        "$bin" model demo --size full --seed 1 --out "$model"
fi
out="$work/out"
rm -rf "$out"
/usr/bin/time -f "infer: %e s wall, peak RSS %M KiB" \
    "$bin" infer --model "$model" --out "$out" --threads "$threads" --device cpu \
    "$fx/studies/STUDY_A"
python3 - "$out/STUDY_A_run.json" "$fx/models/fullsize_reference.json" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
ref = json.load(open(sys.argv[2]))["cpu_timings_same_machine_random_weights"]
t = run.get("timings", run.get("timing", {}))
for k, v in t.items():
    print(f"{k:>24}: {v:8.3f} s")
series = run.get("series", [])
enc = sum(s.get("tokens_after", s.get("tokens_after_selection", 0)) for s in series)
print(f"tokens encoded: {enc}")
ref_total = ref["vqvae_encoder_s_per_token"] * 2752 + ref["hiervit_forward_s_for_study_A_token_counts"]
model_s = sum(v for k, v in t.items() if any(x in k for x in ("vqvae", "encode", "hiervit", "model", "heads")))
print(f"model stages {model_s:.2f} s vs reference {ref_total:.1f} s: ratio {model_s / ref_total:.3f} (target <= 0.5)")
PY
