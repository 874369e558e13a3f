# Sourced by scripts: puts the venv's python first so torch-sys finds libtorch 2.13.0.
_prima_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The venv's resolved path (setup links .venv to a versioned directory under ~/.cache):
# torch-sys bakes the libtorch directory it finds into the shared target dir and into
# binaries' rpath, so it must not name a clone that may be deleted later.
_prima_venv="$(readlink -f "$_prima_root/.venv" 2>/dev/null || echo "$_prima_root/.venv")"
export PATH="$_prima_venv/bin:$HOME/.cargo/bin:$PATH"
unset _prima_venv
export LIBTORCH_USE_PYTORCH=1
export PRIMA_REFERENCE_DIR="${PRIMA_REFERENCE_DIR:-$(cd "$_prima_root/.." && pwd)/shared/fixtures/prima-reference}"
unset _prima_root
# Dependencies compile once per machine, not once per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prima-node/cargo-target}"
# The cluster's recommended nats-server (setup installs the pinned release there; see
# scripts/setup.sh): the newest one installed, unless one is named.
if [ -z "${PRIMA_NATS_SERVER:-}" ]; then
  PRIMA_NATS_SERVER="$(ls -d "$HOME"/.cache/prima-node/nats-server-*/nats-server 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$PRIMA_NATS_SERVER" ] && export PRIMA_NATS_SERVER || unset PRIMA_NATS_SERVER
fi
