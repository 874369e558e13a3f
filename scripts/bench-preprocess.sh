#!/usr/bin/env bash
# Benchmark (not a test): DICOM → selected VQ-VAE input tokens for STUDY_A, median of 5,
# against the upstream reference timings recorded in the fixtures (load + tokenize).
# Env: RUNS (5), PRIMA_NODE_BIN (default: the release build).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin=$(release_bin)
ref="$PRIMA_REFERENCE_DIR"
study="$ref/studies/STUDY_A"
runs=${RUNS:-5}
times=(); rss=()
for i in $(seq "$runs"); do
  out=$( { /usr/bin/time -f 'maxrss_kb %M' "$bin" prepare --slice-order filename "$study"; } 2>&1 )
  times+=("$(echo "$out" | awk '/^prepare_seconds/ {print $2}')")
  rss+=("$(echo "$out" | awk '/^maxrss_kb/ {print $2}')")
done
python3 - "$ref/timings.json" "${times[*]}" "${rss[*]}" <<'PY'
import json, statistics, sys
t = json.load(open(sys.argv[1]))["runs"]["STUDY_A"]
ref = t["load_study_s (DICOM read + resample + orient, all series)"] + t["tokenize_s (dataset __getitem__, all series)"]
times = [float(x) for x in sys.argv[2].split()]
rss = [int(x) for x in sys.argv[3].split()]
med = statistics.median(times)
print(f"{'stage':<34}{'prima-node':>12}{'reference':>12}{'speed-up':>10}")
print(f"{'DICOM -> selected tokens (s)':<34}{med:>12.3f}{ref:>12.3f}{ref/med:>9.1f}x")
print(f"runs: {', '.join(f'{x:.3f}' for x in times)}; peak RSS {max(rss)/1024:.0f} MiB")
PY
