#!/usr/bin/env bash
# Benchmark (not a test): C-STORE ingest throughput of prima-node against DCMTK storescp,
# side by side on this machine. Both receive the same synthetic study from DCMTK storescu
# (TCP_NODELAY=1, the same max PDU on every side), with 1, 4 and 16 parallel associations
# (the files split round-robin across that many storescu processes), alternating
# storescp, prima-node, storescp, prima-node ... for ROUNDS rounds. Each run starts on an
# empty output directory after `sync`, so neither side pays for the other's writeback.
#
#   scripts/bench-ingest.sh [N] [ROUNDS]         (defaults 1000 and 5; env N, ROUNDS too)
#   env: ASSOCS="1 4 16"  PDU=65536  ROWS=512 COLS=512  SERIES=4  BENCH_DIR=<scratch dir>
#        KEEP=1 (keep BENCH_DIR)  PRIMA_NODE_BIN=<binary> (default: release build)
#        FRESH_DIRS=1: every run writes into a new directory and nothing is deleted until the
#          end (needs N x 0.5 MB x 6 x ROUNDS of disk). On ext4 without a journal (this VM)
#          creating files right after thousands were deleted costs extra CPU in the kernel
#          (`recently_deleted`, skipping inodes freed in the last minute) for both receivers.
#          This mode first waits SETTLE_S seconds (default 61) so that files deleted just
#          before the benchmark (an earlier run's cleanup) no longer count as recent.
#        PRIMA_NODE_BIN_B=<another prima-node binary>: A/B two builds. Each round also runs
#          that binary right after the first, under the same conditions, and a second table
#          compares them (run to run noise on a shared VM is larger than most changes).
#        HTTP_B=1: the B run is the same binary with [http] on and a client fetching the
#          overview, the studies page and /metrics every HTTP_POLL_S seconds (default 0.5,
#          far more often than a Prometheus scrape) while the study arrives: what the
#          status page costs ingest.
#
# storescp runs with --fork (one process per association, as a parallel SCP must) and
# +B (bit-preserving: the received bytes are streamed to the file as they come, which is
# what prima-node does too, and storescp's fastest mode). storescp never fsyncs: its
# Success means "in the page cache". prima-node answers Success only after the file and
# its directory entry are durable (fsync), so the comparison is conservative for the node.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=${1:-${N:-1000}}
ROUNDS=${2:-${ROUNDS:-5}}
ASSOCS=${ASSOCS:-"1 4 16"}
PDU=${PDU:-65536}
ROWS=${ROWS:-512}
COLS=${COLS:-512}
SERIES=${SERIES:-4}
need_dcmtk
# The stand-in processor (no model): this benchmark measures reception only.
bin=$(release_bin stand-in)
bench_workdir

# ---- data ------------------------------------------------------------------------
data="$work/data"
[ -f "$data/.done" ] || rm -rf "$data" # a partial study from an interrupted run
bench_study "$data" "$N" "$SERIES" "$ROWS" "$COLS"
mapfile -t files < <(find "$data" -name '*.dcm' | sort)
[ "${#files[@]}" -eq "$N" ] || { echo "expected $N files, found ${#files[@]}" >&2; exit 1; }
bytes=$(cat "${files[@]}" | wc -c)
cat "${files[@]}" >/dev/null # warm the page cache: the senders read from memory

# ---- targets -----------------------------------------------------------------------
start_storescp() { # outdir port
  mkdir -p "$1"
  TCP_NODELAY=1 storescp --fork -aet STORESCP -pdu "$PDU" +B -dhl -od "$1" "$2" \
    >"$work/storescp.log" 2>&1 &
  target_pid=$!
  pids+=("$target_pid")
  wait_echo STORESCP "$2" 300
}

start_node() { # statedir port [binary] [http port]
  local node_bin=${3:-$bin}
  mkdir -p "$1"
  cat >"$1.toml" <<EOF
[node]
ae_title = "PRIMA"
listen = "127.0.0.1:$2"
state_dir = "$1"
max_associations = 64
read_timeout_s = 60
max_pdu_length = $PDU

[model]
dir = "$work/no-model"
device = "cpu"

[assembly]
quiet_period_s = 3600
force_complete_s = 7200
min_series = 2

[storage]
min_free_mb = 64

[[sources]]
ae_title = "BENCHSCU"
host = "127.0.0.1"
EOF
  [ -z "${4:-}" ] || printf '\n[http]\nlisten = "127.0.0.1:%s"\nopen_reads = true\n' "$4" >>"$1.toml"
  PRIMA_NODE_FAKE_PROCESSOR=1 RUST_LOG=warn "$node_bin" serve --config "$1.toml" \
    >>"$work/node.log" 2>&1 &
  target_pid=$!
  pids+=("$target_pid")
  wait_echo PRIMA "$2" 300
}

# CPU seconds (user + system) used so far by the target and its children, reaped or not
# (storescp --fork handles each association in a child process).
cpu_of() {
  local hz p total=0 t
  hz=$(getconf CLK_TCK)
  for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    t=$(awk '{print $14 + $15 + $16 + $17}' /proc/"$p"/stat 2>/dev/null || echo 0)
    total=$((total + t))
  done
  python3 -c "print($total / $hz)"
}

stop_target() {
  kill "$target_pid" 2>/dev/null || true
  wait "$target_pid" 2>/dev/null || true
}

# Send all files over $1 parallel associations to ae $2 port $3; prints seconds.
send() {
  local k=$1 ae=$2 port=$3 i
  local -a lists
  for ((i = 0; i < k; i++)); do lists[i]=""; done
  for i in "${!files[@]}"; do lists[i % k]+="${files[i]}"$'\n'; done
  local -a sp=()
  local t0 t1 rc=0
  t0=$(date +%s.%N)
  for ((i = 0; i < k; i++)); do
    # shellcheck disable=SC2086
    printf '%s' "${lists[i]}" | xargs env TCP_NODELAY=1 storescu -aet BENCHSCU -aec "$ae" \
      -pdu "$PDU" 127.0.0.1 "$port" >"$work/storescu.$i.log" 2>&1 &
    sp+=($!)
  done
  for p in "${sp[@]}"; do wait "$p" || rc=1; done
  t1=$(date +%s.%N)
  if [ $rc -ne 0 ]; then
    echo "bench-ingest: storescu failed sending to $ae:" >&2
    cat "$work"/storescu.*.log >&2
    return 1
  fi
  python3 -c "print($t1 - $t0)"
}

run_node() { # label binary associations round [http]
  local label=$1 node_bin=$2 k=$3 r=$4 st s c got http_port="" poller=""
  if [ -n "${FRESH_DIRS:-}" ]; then
    st="$work/runs/$label-$r-$k"
  else
    st="$work/node-state"
    rm -rf "$st" "$work/storescp-out"
  fi
  sync
  port=$(free_port)
  [ -z "${5:-}" ] || http_port=$(free_port)
  start_node "$st" "$port" "$node_bin" "$http_port"
  if [ -n "$http_port" ]; then
    (while :; do
      for u in / /studies /metrics; do curl -s -o /dev/null "http://127.0.0.1:$http_port$u" || true; done
      sleep "${HTTP_POLL_S:-0.5}"
    done) &
    poller=$!
  fi
  c0=$(cpu_of "$target_pid")
  s=$(send "$k" PRIMA "$port")
  c=$(python3 -c "print($(cpu_of "$target_pid") - $c0)")
  [ -z "$poller" ] || { kill "$poller"; wait "$poller" 2>/dev/null || true; }
  stop_target
  got=$(find "$st/spool/objects" -name '*.dcm' | wc -l)
  [ "$got" -eq "$N" ] || { echo "$label stored $got of $N" >&2; tail -n 20 "$work/node.log" >&2; exit 1; }
  printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$k" "$r" "$s" "$c" >>"$results"
}

results="$work/results.tsv"
: >"$results"
echo "machine: $(machine), $(df -T "$work" | awk 'NR==2 {print $2}') at $work; load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
echo "data: $N instances, $bytes bytes, PDU $PDU, rounds $ROUNDS, associations: $ASSOCS" >&2
if [ -n "${FRESH_DIRS:-}" ] && [ "${SETTLE_S:-61}" -gt 0 ]; then
  echo "FRESH_DIRS: waiting ${SETTLE_S:-61} s for recently deleted inodes to age out" >&2
  sync
  sleep "${SETTLE_S:-61}"
fi
for r in $(seq "$ROUNDS"); do
  for k in $ASSOCS; do
    # A: storescp
    if [ -n "${FRESH_DIRS:-}" ]; then out="$work/runs/storescp-$r-$k"; else out="$work/storescp-out"; fi
    rm -rf "$out"; sync
    port=$(free_port)
    start_storescp "$out" "$port"
    c0=$(cpu_of "$target_pid")
    s=$(send "$k" STORESCP "$port")
    c=$(python3 -c "print($(cpu_of "$target_pid") - $c0)")
    stop_target
    got=$(find "$out" -type f | wc -l)
    [ "$got" -eq "$N" ] || { echo "storescp stored $got of $N" >&2; exit 1; }
    printf 'storescp\t%s\t%s\t%s\t%s\n' "$k" "$r" "$s" "$c" >>"$results"
    # B: prima-node (and the other build, with PRIMA_NODE_BIN_B)
    run_node prima-node "$bin" "$k" "$r"
    [ -z "${PRIMA_NODE_BIN_B:-}" ] || run_node prima-node-b "$PRIMA_NODE_BIN_B" "$k" "$r"
    [ -z "${HTTP_B:-}" ] || run_node prima-node-b "$bin" "$k" "$r" http
    echo "round $r, $k assoc (s): $(awk -v k="$k" -v r="$r" '$2==k&&$3==r {printf "%s %.2f  ", $1, $4}' "$results")" >&2
  done
done
rm -rf "$work/node-state" "$work/storescp-out" "$work/runs"

python3 - "$results" "$N" "$bytes" "$PDU" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
n, nbytes, pdu = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
by, cpu = {}, {}
for tgt, k, r, s, c in rows:
    by.setdefault((tgt, int(k)), []).append(float(s))
    cpu.setdefault((tgt, int(k)), []).append(float(c))
print(f"C-STORE ingest, {n} instances ({nbytes/1e6:.0f} MB), max PDU {pdu}, median of {len(next(iter(by.values())))} rounds")
print("storescp: --fork +B, no fsync. prima-node: file + directory entry fsynced before each Success.")
print("CPU ms/inst: the receiver's user+system CPU per instance (median), a load-independent check.")
print(f"{'assoc':>5} | {'storescp MB/s':>13} {'inst/s':>7} {'CPU ms/inst':>11} | {'prima-node MB/s':>15} {'inst/s':>7} {'CPU ms/inst':>11} | {'node/storescp':>13}")
def med(tgt, k):
    """Median seconds and CPU ms per instance of one receiver at k associations."""
    return statistics.median(by[(tgt, k)]), statistics.median(cpu[(tgt, k)]) * 1000 / n
ks = sorted({k for _, k in by})
for k in ks:
    (a, ca), (b, cb) = med("storescp", k), med("prima-node", k)
    print(f"{k:>5} | {nbytes/a/1e6:>13.1f} {n/a:>7.0f} {ca:>11.2f} | {nbytes/b/1e6:>15.1f} {n/b:>7.0f} {cb:>11.2f} | {a/b:>13.2f}")
if any(t == "prima-node-b" for t, _ in by):
    print()
    print("A/B: prima-node vs B (PRIMA_NODE_BIN_B, or with HTTP_B=1 the same build with [http] on and polled), same rounds")
    print(f"{'assoc':>5} | {'A inst/s':>8} {'CPU ms/inst':>11} | {'B inst/s':>8} {'CPU ms/inst':>11} | {'B/A speed':>9}")
    for k in ks:
        (a, ca), (b, cb) = med("prima-node", k), med("prima-node-b", k)
        print(f"{k:>5} | {n/a:>8.0f} {ca:>11.2f} | {n/b:>8.0f} {cb:>11.2f} | {a/b:>9.2f}")
print("all runs (s): " + "; ".join(f"{t} {k}: " + " ".join(f"{x:.2f}" for x in v) for (t, k), v in sorted(by.items())))
PY
