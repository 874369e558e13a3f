# Sourced by scripts: puts the venv's python first so torch-sys finds libtorch 2.13.0.
_prima_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$_prima_root/.venv/bin:$HOME/.cargo/bin:$PATH"
export LIBTORCH_USE_PYTORCH=1
export PRIMA_REFERENCE_DIR="${PRIMA_REFERENCE_DIR:-$(cd "$_prima_root/.." && pwd)/shared/fixtures/prima-reference}"
unset _prima_root
# Dependencies compile once per machine, not once per clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prima-node/cargo-target}"
