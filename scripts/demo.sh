#!/usr/bin/env bash
# The README's first command: set up (idempotent), build, create the demo model, generate
# a synthetic brain MR study and run Prima on it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
. scripts/env.sh
bin="$CARGO_TARGET_DIR/release/prima-node"
work="${PRIMA_DEMO_DIR:-$PWD/demo-out}"
rm -rf "$work"; mkdir -p "$work"
"$bin" model demo --out "$work/model" --size small --seed 1
"$bin" synth-study --out "$work/study" --seed 1
"$bin" infer --model "$work/model" --out "$work/results" "$work/study"
echo "== predictions: $work/results/study_predictions.json"
head -n 20 "$work/results/study_predictions.json"
