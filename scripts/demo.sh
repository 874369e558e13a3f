#!/usr/bin/env bash
# The README's first command. Sets up (idempotent), builds, creates the demo model,
# generates a synthetic brain MR study, starts the node and a DCMTK storescp as the
# "PACS", sends the study with storescu, waits for the results, prints what came back,
# and stops everything.
set -euo pipefail
# setup.sh first: env.sh resolves the .venv link that setup creates.
bash "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
bin="$CARGO_TARGET_DIR/release/prima-node"
work="${PRIMA_DEMO_DIR:-$PWD/demo-out}"
node_port="${PRIMA_DEMO_PORT:-11112}"
pacs_port="${PRIMA_DEMO_PACS_PORT:-11113}"
http_port="${PRIMA_DEMO_HTTP_PORT:-8080}"
export TCP_NODELAY=1   # DCMTK only disables Nagle with this set

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

rm -rf "$work"; mkdir -p "$work/pacs"
echo "== demo model (random weights, NOT FOR CLINICAL USE)"
"$bin" model demo --out "$work/model" --size small --seed 1
echo "== synthetic study"
"$bin" synth-study --out "$work/study" --seed 1

storescp -aet PACS +uf -od "$work/pacs" "$pacs_port" >"$work/pacs.log" 2>&1 &
pids+=($!)
cat >"$work/prima-node.toml" <<TOML
[node]
ae_title = "PRIMA"
listen = "127.0.0.1:$node_port"
state_dir = "$work/state"

[model]
dir = "$work/model"
device = "cpu"

[assembly]
quiet_period_s = 2
force_complete_s = 120
min_series = 2

[storage]
min_free_mb = 100

[[sources]]
ae_title = "DEMO_SCU"
host = "127.0.0.1"

[[destinations]]
ae_title = "PACS"
host = "127.0.0.1"
port = $pacs_port

[http]
listen = "127.0.0.1:$http_port"
# The demo's data is synthetic and its page on loopback: no token (check-config warns).
open_reads = true
TOML
"$bin" check-config "$work/prima-node.toml"
RUST_LOG=info "$bin" serve --config "$work/prima-node.toml" >"$work/node.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  echoscu -aet DEMO_SCU -aec PRIMA 127.0.0.1 "$node_port" >/dev/null 2>&1 && break
  sleep 0.2
done
echo "== sending the study to the node (storescu)"
storescu -aet DEMO_SCU -aec PRIMA +sd +r 127.0.0.1 "$node_port" "$work/study"
echo "== waiting for the SR and KOS at the PACS"
for _ in $(seq 600); do
  n=$(find "$work/pacs" -type f | wc -l)
  [ "$n" -ge 2 ] && break
  sleep 0.5
done
sr=$(find "$work/pacs" -type f -name 'SR*' | head -n1)
ko=$(find "$work/pacs" -type f -name 'KO*' | head -n1)
if [ -z "$sr" ] || [ -z "$ko" ]; then
  echo "no results arrived; node log:" >&2; tail -n 40 "$work/node.log" >&2; exit 1
fi
echo "== node status"
"$bin" status --config "$work/prima-node.toml"
echo "== Key Object Description (what the worklist shows)"
# awk reads everything: an early-exiting reader would SIGPIPE dsrdump under pipefail
dsrdump +Pl "$ko" 2>/dev/null | awk '/Key Object Description/ && !done { print; done = 1 }'

echo "== findings SR (dsrdump, first lines)"
dsrdump "$sr" 2>/dev/null | awk 'NR <= 40'
echo "== status page (what the node did, study by study)"
curl -s "http://127.0.0.1:$http_port/api/overview" | python3 -c 'import json,sys; o=json.load(sys.stdin); print("overview:", {k: o[k] for k in ("studies_by_state", "outbox_by_state", "queue_depth")})'
echo "status page: http://127.0.0.1:$http_port/  (metrics: /metrics)"
echo "== files: $work/pacs ; node log: $work/node.log"
if [ -n "${PRIMA_DEMO_STAY:-}" ]; then
  echo "PRIMA_DEMO_STAY: the node keeps running for the browser; Ctrl-C stops it"
  wait
else
  echo "to browse the demo state later: $bin serve --config $work/prima-node.toml"
  echo "  (then open http://127.0.0.1:$http_port/; PRIMA_DEMO_STAY=1 scripts/demo.sh keeps it up)"
fi
