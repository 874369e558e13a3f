#!/usr/bin/env bash
# Benchmark (not a test): the full-size demo model on STUDY_A with 2 threads. Prints
# per-stage seconds, tokens encoded, peak RSS and the ratio of the model stages to the
# upstream reference cost recorded in the fixtures (models/fullsize_reference.json).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
. scripts/env.sh
cargo build --release --locked -q
bin="$CARGO_TARGET_DIR/release/prima-node"
ref="$PRIMA_REFERENCE_DIR"
work="${BENCH_DIR:-$HOME/.cache/prima-node/bench}"
threads="${THREADS:-2}"
mkdir -p "$work"
[ -f "$work/full-demo/manifest.json" ] || "$bin" model demo --out "$work/full-demo" --size full --seed 1
rm -rf "$work/out"
/usr/bin/time -f 'maxrss_kb %M' -o "$work/time.txt" \
  "$bin" infer --model "$work/full-demo" --out "$work/out" --slice-order filename \
  --threads "$threads" --device cpu "$ref/studies/STUDY_A"
python3 - "$work/out/STUDY_A_run.json" "$ref/models/fullsize_reference.json" "$ref/timings.json" "$work/time.txt" <<'PY'
import json, sys
run = json.load(open(sys.argv[1])); t = run["timings"]
fr = json.load(open(sys.argv[2]))["cpu_timings_same_machine_random_weights"]
tim = json.load(open(sys.argv[3]))["runs"]["STUDY_A"]
rss = int(open(sys.argv[4]).read().split()[-1]) / 1024
ref_tokens = tim["vqvae_tokens"]
ref_vq = fr["vqvae_encoder_s_per_token"] * ref_tokens
ref_vit = fr["hiervit_forward_s_for_study_A_token_counts"]
ref_pre = tim["load_study_s (DICOM read + resample + orient, all series)"] + tim["tokenize_s (dataset __getitem__, all series)"]
ref_total = ref_pre + ref_vq + ref_vit
ours_total = t["total_s"]
print(f"{'stage':<26}{'prima-node s':>14}{'reference s':>14}{'ratio':>8}")
rows = [("DICOM -> tokens", t["scan_s"] + t["prepare_s"], ref_pre),
        ("VQ-VAE encoder", t["vqvae_s"], ref_vq),
        ("patchify + HierViT + heads", t["patchify_s"] + t["prima_s"], ref_vit),
        ("end to end", ours_total, ref_total)]
for name, a, b in rows:
    print(f"{name:<26}{a:>14.2f}{b:>14.2f}{a/b:>8.2f}")
n = run["tokens_encoded"]
gflop = 16.5 * n
print(f"tokens encoded {n} (reference encodes {ref_tokens}); {gflop/t['vqvae_s']:.0f} GFLOP/s achieved in the VQ-VAE (16.5 GFLOP/token)")
print(f"peak RSS {rss:.0f} MiB; threads {run['threads']}; model {run['model_version']}")
PY
