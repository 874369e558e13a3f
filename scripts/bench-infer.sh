#!/usr/bin/env bash
# Benchmark (not a test): the full-size demo model on STUDY_A with 2 threads. Prints
# per-stage seconds, tokens encoded, peak RSS and the ratio of the model stages to the
# upstream reference cost recorded in the fixtures (models/fullsize_reference.json), and
# the VQ-VAE's achieved GFLOP/s against this CPU's measured float32 GEMM rate (libtorch,
# same threads): the floor = encoded tokens x FLOPs per token / that rate.
# Env: THREADS (2), VQVAE_CHUNK (400), BENCH_DIR, MODEL_SIZE (full; small = smoke run),
# PRIMA_NODE_BIN (default: the release build).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin=$(release_bin)
ref="$PRIMA_REFERENCE_DIR"
work="${BENCH_DIR:-$HOME/.cache/prima-node/bench}"
threads="${THREADS:-2}"
chunk="${VQVAE_CHUNK:-400}"
mkdir -p "$work"
size="${MODEL_SIZE:-full}"
model="$work/$size-demo"
[ -f "$model/manifest.json" ] || "$bin" model demo --out "$model" --size "$size" --seed 1
rm -rf "$work/out"
/usr/bin/time -f 'maxrss_kb %M' -o "$work/time.txt" \
  "$bin" infer --model "$model" --out "$work/out" --slice-order filename \
  --threads "$threads" --vqvae-chunk "$chunk" --device cpu "$ref/studies/STUDY_A"
# The CPU's sustained float32 rate through the same libtorch and threads: the better of a
# large MKL GEMM and the same GEMM as a oneDNN 1x1x1 convolution (MKL is not tuned for AMD).
python3 - "$threads" > "$work/gemm.txt" <<'PY'
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
def best(f, n=5):
    r = 9e9
    for _ in range(n):
        t0 = time.perf_counter(); f(); r = min(r, time.perf_counter() - t0)
    return r
cl = lambda t: t.permute(0, 2, 3, 4, 1).contiguous().permute(0, 4, 1, 2, 3)
with torch.no_grad():
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    x, k = cl(torch.randn(1, 2048, 1, 1, 2048)), cl(torch.randn(2048, 2048, 1, 1, 1))
    t = min(best(lambda: a @ b), best(lambda: torch.nn.functional.conv3d(x, k)))
print(2 * 2048**3 / t / 1e9)
PY
python3 - "$work/out/STUDY_A_run.json" "$ref/models/fullsize_reference.json" "$ref/timings.json" "$work/time.txt" "$work/gemm.txt" <<'PY'
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
gflop = run["vqvae_gflop"]
peak = float(open(sys.argv[5]).read())
rate = gflop / t["vqvae_s"]
print(f"tokens encoded {n} (reference encodes {ref_tokens}); {gflop / n:.2f} GFLOP per token")
print(f"VQ-VAE {rate:.1f} GFLOP/s achieved; GEMM {peak:.1f} GFLOP/s measured here ({rate / peak:.0%});"
      f" floor {gflop / peak:.1f} s, VQ-VAE at {t['vqvae_s'] / (gflop / peak):.2f}x the floor")
print(f"reference CPU: {ref_vq / ref_tokens:.4f} s/token = {gflop / n / (ref_vq / ref_tokens):.0f} GFLOP/s")
print(f"peak RSS {rss:.0f} MiB; threads {run['threads']}; model {run['model_version']}")
PY
