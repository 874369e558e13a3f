#!/usr/bin/env bash
# GPU check (run on a machine with an NVIDIA GPU): STUDY_A with the converted fixture
# model on CPU and on CUDA (f32, then f16 and bf16), relative error of every output, and
# the timing of the full-size demo model on the GPU.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="${PRIMA_BIN:-$CARGO_TARGET_DIR/release/prima-node}"
[ -x "$bin" ] || cargo build --release --locked -q
ref="$PRIMA_REFERENCE_DIR"
work="$(mktemp -d)"
.venv/bin/python scripts/convert-checkpoint -q --prima "$ref/models/prima/primafullmodel_fixture.pt" \
  --tokenizer "$ref/models/tokenizer/vqvae_reduced.pth" \
  --tokenizer-config "$ref/models/tokenizer/tokenizer_config.json" --out "$work/fixture-model"
"$bin" infer --model "$work/fixture-model" --out "$work/cpu" --device cpu --slice-order filename "$ref/studies/STUDY_A"
for p in f32 f16 bf16; do
  "$bin" infer --model "$work/fixture-model" --out "$work/cuda-$p" --device cuda --precision "$p" \
    --slice-order filename "$ref/studies/STUDY_A"
done
python3 - "$work" <<'PY'
import json, sys, math
w = sys.argv[1]
def flat(p):
    d = json.load(open(p))
    out = {}
    for sec in ("diagnosis", "referral", "priority"):
        for k, v in d[sec].items(): out[f"{sec}/{k}"] = v[0]
    return out, d["clip_emb"][0]
cpu, cpu_emb = flat(f"{w}/cpu/STUDY_A_predictions.json")
for p in ("f32", "f16", "bf16"):
    g, g_emb = flat(f"{w}/cuda-{p}/STUDY_A_predictions.json")
    rel = max(abs(g[k] - cpu[k]) / max(abs(cpu[k]), 1e-6) for k in cpu)
    l2 = math.sqrt(sum((a - b) ** 2 for a, b in zip(g_emb, cpu_emb))) / math.sqrt(sum(a * a for a in cpu_emb))
    print(f"cuda {p}: max relative error of scores {rel:.2e}, clip_emb relative L2 {l2:.2e}")
PY
"$bin" model demo --out "$work/full-demo" --size full --seed 1
/usr/bin/time -f 'wall %e s, maxrss %M kB' "$bin" infer --model "$work/full-demo" --out "$work/full-cuda" \
  --device cuda --slice-order filename "$ref/studies/STUDY_A"
python3 -c "import json,sys; print(json.dumps(json.load(open(sys.argv[1]))['timings']))" "$work/full-cuda/STUDY_A_run.json"
