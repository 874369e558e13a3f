#!/usr/bin/env bash
# Benchmark (not a test): studies per hour through the single node (the reference) and
# through a loopback cluster (3 nats-servers, 1 ingest node) with 1 and 2 model workers,
# all with the fixture model and the same synthetic studies, in one run on this machine.
# Prints a table with the ratio to the single node, the median model time per study and
# the bytes per study (the inputs of the sizing estimate in docs/cluster.md).
#
#   scripts/bench-cluster.sh [STUDIES]     (default 8 per setup)
#   env: PRIMA_NODE_BIN=<binary> (default: the release build)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_dcmtk
command -v nats-server >/dev/null || { echo "$prog: nats-server not found; run scripts/setup.sh" >&2; exit 1; }
bin=$(release_bin)
PRIMA_NODE_BIN="$bin" BENCH_STUDIES="${1:-8}" \
  cargo test --locked -q --features stand-in --test cluster -- --ignored --nocapture cluster_throughput 2>&1 \
  | grep -v 'async_nats' | sed -n "/^cluster throughput/,/^bytes per study/p"
