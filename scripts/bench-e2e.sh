#!/usr/bin/env bash
# Benchmark (not a test): end-to-end latency of prima-node for one study, from the last
# instance's C-STORE Success to the SR stored at the destination (a DCMTK storescp), with
# the small demo model, and where that time goes. ROUNDS runs (a fresh node each), medians.
#
#   scripts/bench-e2e.sh [ROUNDS]              (default 3) STUDY_A from the fixtures
#   env: QUIET=1.0 (quiet period, s)  STUDY=<folder of DICOM files>  BENCH_DIR  KEEP=1
#        SIZE=small|full (demo model)  PRIMA_NODE_BIN=<binary> (default: release build)
#        WAIT_S=1800 (give up waiting for the SR after this long)
#        NODE_LOG=info (the node's RUST_LOG, e.g. info,prima_node::speculate=debug)
#        SPECULATIVE=true|false ([assembly] speculative_prepare; unset: the node's default)
#        EXPLAIN=1 ([explain] enabled with on_cpu = true; EXPLAIN_SAMPLES=1000)
#   RSS mode:  MODE=rss scripts/bench-e2e.sh   a generated 3000-instance study (N=3000,
#        SERIES=10 of 300 slices, ROWS=COLS=512; `prima-node synth-study --instances`) goes
#        through the node; prints the node's peak RSS (VmHWM) and the model's share of it.
#
# Stages (seconds; node log timestamps and the run record's own timings):
#   quiet     the configured quiet period (by design, not overhead)
#   detect    last Success + quiet  -> "study stable: job queued" (assembler polling)
#   queue     job queued            -> "processing study" (worker picked it up)
#   headers   reading instance headers, grouping series        (run record scan_s)
#   decode+tokens decode, resample, orient, tokenize, select   (run record prepare_s)
#             at job time; series prepared in the background while the study arrived
#             ([assembly] speculative_prepare) are only taken here: the table shows how
#             many (prepare_cached_series) and the background seconds behind them
#             (prepare_speculative_s), which are not on the path and not in the total.
#   model     VQ-VAE + patchify + Prima heads                  (vqvae_s + patchify_s + prima_s)
#   explanation  LIME, with EXPLAIN=1                          (run record explanation seconds)
#   report    SR/KOS/JSON built, outputs made durable, job recorded
#   send      "study processed"     -> SR file written by the destination storescp
# overhead = total - quiet - model - explanation.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE=${MODE:-e2e}
ROUNDS=${1:-${ROUNDS:-3}}
QUIET=${QUIET:-1.0}
SIZE=${SIZE:-small}
need_dcmtk
bin=$(release_bin)
bench_workdir

if [ "$MODE" = rss ]; then
  STUDY=${STUDY:-$work/rss-study}
  bench_study "$STUDY" "${N:-3000}" "${SERIES:-10}" "${ROWS:-512}" "${COLS:-512}"
  ROUNDS=1
else
  STUDY=${STUDY:-$PRIMA_REFERENCE_DIR/studies/STUDY_A}
fi
[ -d "$STUDY" ] || { echo "bench-e2e: study folder $STUDY not found (PRIMA_REFERENCE_DIR?)" >&2; exit 1; }
# Every regular file but dot files and notes (STUDY_A's files have no extension).
find "$STUDY" -type f ! -name '.*' ! -name '*.txt' ! -name '*.md' ! -name '*.json' | sort >"$work/files.txt"
nfiles=$(wc -l <"$work/files.txt")

model="$work/model-$SIZE"
[ -f "$model/.done" ] || { "$bin" model demo --size "$SIZE" --out "$model" >&2 && touch "$model/.done"; }

results="$work/results.tsv"
: >"$results"
echo "machine: $(machine); load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for r in $(seq "$ROUNDS"); do
  run="$work/run$r"
  rm -rf "$run"; mkdir -p "$run/dest" "$run/state"
  dport=$(free_port); nport=$(free_port)
  # The destination notes when each file is on its disk.
  storescp -aet DEST -od "$run/dest" -dhl \
    -xcr "echo \"\$(date +%s.%N) #f\" >> $run/received.txt" "$dport" >"$run/storescp.log" 2>&1 &
  dpid=$!; pids+=("$dpid")
  cat >"$run/node.toml" <<EOF
[node]
ae_title = "PRIMA"
listen = "127.0.0.1:$nport"
state_dir = "$run/state"
max_associations = 16
read_timeout_s = 60

[model]
dir = "$model"
device = "cpu"

[assembly]
quiet_period_s = $QUIET
force_complete_s = 3600
min_series = 2
${SPECULATIVE:+speculative_prepare = $SPECULATIVE}

[storage]
min_free_mb = 64
$(if [ -n "${EXPLAIN:-}" ]; then printf '\n[explain]\nenabled = true\non_cpu = true\nsamples = %s\n' "${EXPLAIN_SAMPLES:-1000}"; fi)

[outbox]
retry_initial_s = 1
retry_max_s = 5
connect_timeout_s = 5

[[sources]]
ae_title = "BENCHSCU"
host = "127.0.0.1"

[[destinations]]
ae_title = "DEST"
host = "127.0.0.1"
port = $dport
EOF
  RUST_LOG=${NODE_LOG:-info} "$bin" serve --config "$run/node.toml" >"$run/node.log" 2>&1 &
  npid=$!; pids+=("$npid")
  wait_echo DEST "$dport"
  wait_echo PRIMA "$nport"
  for _ in $(seq 600); do grep -q "model loaded" "$run/node.log" && break; sleep 0.1; done
  t_send0=$(date +%s.%N)
  # storescu -v prints a line per response; each line is stamped as it arrives, so the
  # last Success is timed where it happened, not when storescu exited.
  xargs env TCP_NODELAY=1 storescu -v -aet BENCHSCU <"$work/files.txt" \
    -aec PRIMA 127.0.0.1 "$nport" 2>&1 | python3 -u -c '
import sys, time
for l in sys.stdin:
    print("%.6f %s" % (time.time(), l.rstrip()))' >"$run/storescu.log"
  t_last=$(awk '/Received Store Response \(Success\)/ {t=$1} END {print t}' "$run/storescu.log")
  [ -n "$t_last" ] || { echo "bench-e2e: no Success from the node" >&2; tail "$run/storescu.log" >&2; exit 1; }
  ok=""
  deadline=$(( $(date +%s) + ${WAIT_S:-1800} ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ -f "$run/received.txt" ] && grep -q " SR" "$run/received.txt"; then ok=1; break; fi
    sleep 0.02
  done
  [ -n "$ok" ] || { echo "bench-e2e: no SR at the destination; node log:" >&2; tail -n 30 "$run/node.log" >&2; exit 1; }
  hwm=$(awk '/VmHWM/ {print $2}' /proc/"$npid"/status)
  kill "$npid" "$dpid" 2>/dev/null || true
  wait "$npid" 2>/dev/null || true
  wait "$dpid" 2>/dev/null || true
  recjson=$(find "$run/state/results" -name 'job-*-run.json' | head -1)
  python3 - "$run" "$t_send0" "$t_last" "$QUIET" "$recjson" "$hwm" >>"$results" <<'PY'
import datetime, json, re, sys
run, t_send0, t_last, quiet, rec, hwm = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
def ts(line):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
    return datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
ev, sr_sop = {}, None
for line in open(f"{run}/node.log", encoding="utf-8", errors="replace"):
    line = re.sub(r"\x1b\[[0-9;]*m", "", line)
    for key, pat in [("queued", "study stable: job queued"), ("processing", "processing study"),
                     ("processed", "study processed"), ("model_loaded", "model loaded")]:
        if pat in line and key not in ev:
            ev[key] = ts(line)
    if 'output built kind="sr"' in line:
        sr_sop = line.split("sop=")[1].split()[0]
    if "output delivered" in line and sr_sop and f"sop={sr_sop}" in line:
        ev["sr_delivered"] = ts(line)
# The destination's Success response, as the node logged it; the destination's own stamp
# (a shell started by storescp after the file is written) is a cross-check, a few ms later.
stamp = min(float(l.split()[0]) for l in open(f"{run}/received.txt") if l.split()[1].startswith("SR"))
sr = ev.get("sr_delivered", stamp)
record = json.load(open(rec))
t = record["timings"]
model = t["vqvae_s"] + t["patchify_s"] + t["prima_s"]
ex = record.get("explanation") or {}
if ex.get("error"):
    sys.exit(f"bench-e2e: the explanation failed: {ex['error']}")
explanation = sum(f["seconds"] for f in ex.get("findings", []))
total = sr - t_last
row = dict(
    send_study=t_last - t_send0, quiet=quiet,
    detect=ev["queued"] - t_last - quiet, queue=ev["processing"] - ev["queued"],
    headers=t["scan_s"], decode_tokens=t["prepare_s"], model=model, explanation=explanation,
    report=(ev["processed"] - ev["processing"]) - t["scan_s"] - t["prepare_s"] - model - explanation,
    send=sr - ev["processed"], total=total, overhead=total - quiet - model - explanation,
    dest_stamp_lag=stamp - sr,
    cached_series=t.get("prepare_cached_series", 0),
    series=len(json.load(open(rec))["series"]) + len(json.load(open(rec))["skipped"]),
    background_s=t.get("prepare_speculative_s", 0.0),
    vmhwm_mb=hwm / 1024)
print(json.dumps(row))
PY
  echo "round $r: $(tail -n 1 "$results")" >&2
done

python3 - "$results" "$nfiles" "$STUDY" "$MODE" "$SIZE" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
n, study, mode, size = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
if mode == "rss":
    print(f"peak RSS (VmHWM) of prima-node for {n} instances ({study}), {size} demo model: {med['vmhwm_mb']:.0f} MiB")
print(f"end to end, {n} instances of {study}, {size} demo model, median of {len(rows)} runs")
print(f"{'stage':<16}{'seconds':>9}")
for k in ["quiet", "detect", "queue", "headers", "decode_tokens", "model", "explanation", "report", "send"]:
    print(f"{k:<16}{med[k]:>9.3f}")
    if k == "decode_tokens":
        cached = ", ".join(f"{r['cached_series']}/{r['series']}" for r in rows)
        print(f"{'  (background)':<16}{med['background_s']:>9.3f}   series prepared while the study arrived, per run: {cached}")
print(f"{'total':<16}{med['total']:>9.3f}   (last Success -> SR stored at the destination)")
print(f"{'overhead':<16}{med['overhead']:>9.3f}   (total - quiet - model - explanation; target < 0.300)")
print(f"sending the study itself took {med['send_study']:.2f} s; node peak RSS {med['vmhwm_mb']:.0f} MiB")
PY
