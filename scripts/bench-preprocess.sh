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

# Real scanner output (issue 28): a vendor-like study of about VENDOR_IMAGES (3,000)
# instances — diffusion, SWI, 4D, mosaics, Enhanced MR, localizers, mixed matrix, split into
# volumes — against a study of single-volume series with as many 64×64 images (today's
# single-volume path), per image, same binary, same machine, one run.
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
"$bin" synth-study --vendor "${VENDOR_IMAGES:-3000}" --out "$work/vendor" 2>/dev/null
n=$(find "$work/vendor" -type f | wc -l)
"$bin" synth-study --instances "$n" --series 16 --rows 64 --cols 64 --out "$work/plain" 2>/dev/null
measure() {  # prints "images seconds..." for one folder
  local dir=$1 out imgs ts=()
  for i in $(seq "$runs"); do
    out=$("$bin" prepare "$dir")
    ts+=("$(echo "$out" | awk '/^prepare_seconds/ {print $2}')")
  done
  imgs=$(echo "$out" | awk '/^series / {for (i=1;i<=NF;i++) if ($i=="images") s+=$(i+1)}
                            /^skipped / {if (match($0, /\([0-9]+ images\)/)) {
                                           split(substr($0, RSTART + 1), a, " "); s += a[1]}}
                            END {print s+0}')
  echo "$imgs ${ts[*]}"
}
python3 - "$n" "$(measure "$work/vendor")" "$(measure "$work/plain")" <<'PY'
import statistics, sys
n = sys.argv[1]
rows = []
for label, arg in (("vendor-like (split)", sys.argv[2]), ("single-volume series", sys.argv[3])):
    v = arg.split()
    imgs, times = int(v[0]), [float(x) for x in v[1:]]
    med = statistics.median(times)
    rows.append((label, imgs, med, 1000 * med / max(imgs, 1)))
print(f"\n{n} instances per study; prepare = scan + split + decode + resample + tokens")
print(f"{'study':<24}{'images':>8}{'seconds':>10}{'ms/image':>10}")
for r in rows:
    print(f"{r[0]:<24}{r[1]:>8}{r[2]:>10.3f}{r[3]:>10.3f}")
print(f"per image, vendor-like / single-volume: {rows[0][3] / rows[1][3]:.2f}")
PY
