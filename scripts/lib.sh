# Sourced by the scripts, first thing after `set`:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Goes to the repository root, sources env.sh (venv, PRIMA_REFERENCE_DIR, CARGO_TARGET_DIR)
# and defines what several scripts use. Messages name the calling script ($prog).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/env.sh
. scripts/env.sh
prog=$(basename "$0" .sh)

# The DCMTK tools the benchmarks talk DICOM with; exits when one is missing.
need_dcmtk() {
  local t
  for t in storescu storescp echoscu; do
    command -v "$t" >/dev/null || { echo "$prog: $t (DCMTK) not found; run scripts/setup.sh" >&2; exit 1; }
  done
}

# release_bin [FEATURES]: prints the prima-node binary to run: PRIMA_NODE_BIN, or the
# release build with those cargo features (built first).
release_bin() {
  if [ -n "${PRIMA_NODE_BIN:-}" ]; then
    echo "$PRIMA_NODE_BIN"
  else
    cargo build --release --locked -q ${1:+--features "$1"} >&2 || return 1
    echo "$CARGO_TARGET_DIR/release/prima-node"
  fi
}

# Sets $work to BENCH_DIR or a new /tmp/prima-<script>.XXXXXX, and $pids to an empty list
# of background processes; at exit those are killed and $work removed (unless KEEP=1).
bench_workdir() {
  work=${BENCH_DIR:-$(mktemp -d "/tmp/prima-$prog.XXXXXX")}
  mkdir -p "$work"
  pids=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# wait_echo AE PORT [TRIES]: C-ECHO every 0.1 s until it answers (default 600 tries).
wait_echo() {
  for _ in $(seq "${3:-600}"); do
    if echoscu -aet BENCHSCU -aec "$1" 127.0.0.1 "$2" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "$prog: $1 on port $2 did not answer C-ECHO" >&2
  return 1
}

# bench_study DIR INSTANCES SERIES ROWS COLS: the benchmarks' synthetic study, written by
# "$bin" synth-study once (DIR/.done marks it complete).
bench_study() {
  [ -f "$1/.done" ] && return 0
  echo "generating $2 instances (${4}x${5} int16, $3 series) in $1" >&2
  "$bin" synth-study --out "$1" --instances "$2" --series "$3" --rows "$4" --cols "$5" >&2
  touch "$1/.done"
}

# "N CPUs, <model name>" for the benchmarks' first line.
machine() { echo "$(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"; }

# trim_target [MIN_FREE_GB]: the shared target dir (env.sh) keeps every artifact it ever
# built: old test binaries and incremental sessions of each clone path and commit. Those
# not read for 7 days go (ext4's relatime refreshes atime at least daily on use, mmap
# included). If the disk still has less than MIN_FREE_GB (default 6) free, all incremental
# state goes too; below that, fail here with a clear message rather than as a linker's bus
# error on a full disk.
trim_target() {
  local min=${1:-6} dir=$CARGO_TARGET_DIR avail
  [ -d "$dir" ] || return 0
  find "$dir"/*/deps "$dir"/*/build "$dir"/*/incremental -mindepth 1 -maxdepth 1 \
    -atime +7 -exec rm -rf {} + 2>/dev/null || true
  avail=$(( $(df -Pk "$dir" | awk 'NR==2{print $4}') / 1048576 ))
  if [ "$avail" -lt "$min" ]; then
    echo "$prog: only ${avail} GB free under $dir; removing incremental build state" >&2
    rm -rf "$dir"/*/incremental
    avail=$(( $(df -Pk "$dir" | awk 'NR==2{print $4}') / 1048576 ))
  fi
  if [ "$avail" -lt "$min" ]; then
    echo "$prog: only ${avail} GB free under $dir (need ${min}); free some space first" >&2
    return 1
  fi
}
