#!/usr/bin/env bash
# The GPU bundle: everything the bare GPU machine needs to run the full Prima model, in one
# git-ignored folder under 64 MiB (that machine has PyTorch 2.11 + CUDA 13 under /opt/torch,
# no cargo, no network; see docs/performance.md, "GPU").
#
#   scripts/gpu-bundle.sh            build the bundle into ./gpu-bundle (or --out DIR)
#   scripts/gpu-bundle.sh --check    build it, then run its run.sh here on the CPU: the
#                                    bundle cannot rot between GPU runs; non-zero on any
#                                    mismatch with the reference predictions
# On the GPU machine:  OUT=<dir> gpu-bundle/run.sh   (the device tool carries gpu-bundle)
#
# The binary must load that machine's libtorch 2.11, not the 2.13 of our venv: libtorch's
# C++ ABI changes between releases, and torch-sys binds one version's generated API. tch and
# torch-sys 0.24.0 are the releases made for libtorch 2.11, so the bundle is built from a
# copy of the working tree with those two versions pinned instead of 0.26.0, against the
# PyPI torch 2.11.0 wheel (the CUDA 13.0 build, as on the GPU machine) in its own cached
# venv, without an rpath (LD_LIBRARY_PATH names the machine's libtorch), stripped.
#
# A machine that never built it needs: network to PyPI and crates.io (once: the wheel and
# tch/torch-sys 0.24.0 are fetched, then cached), python3 with venv (Debian: python3-venv),
# a C++ compiler (torch-sys compiles its wrapper), strip (binutils), git and the reference
# fixtures ($PRIMA_REFERENCE_DIR). scripts/setup.sh --deps installs the packages.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
repo="$PWD"
check=""
out="$repo/gpu-bundle"
while [ $# -gt 0 ]; do
  case "$1" in
    --check) check=1 ;;
    --out) out="$(realpath -m "$2")"; shift ;;
    *) echo "usage: scripts/gpu-bundle.sh [--check] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

BUNDLE_TORCH=2.11.0
BUNDLE_TCH=0.24.0
LIMIT=$((64 * 1024 * 1024))
cache="${PRIMA_NODE_CACHE:-$HOME/.cache/prima-node}"
fail() { log "$*"; exit 1; }
log() { printf '[gpu-bundle] %s\n' "$*" >&2; }

# ---- what a fresh machine may lack: say so before minutes of work --------------
for t in git cargo c++ strip; do
  command -v "$t" >/dev/null || fail "$t not found (scripts/setup.sh --deps installs the build tools; cargo: rustup)"
done
ref="${PRIMA_REFERENCE_DIR:-}"
for f in models/prima/primafullmodel_fixture.pt models/tokenizer/vqvae_reduced.pth \
  models/tokenizer/tokenizer_config.json studies/STUDY_A expected/STUDY_A/STUDY_A_predictions.json; do
  [ -e "$ref/$f" ] || fail "reference fixture $f not found under PRIMA_REFERENCE_DIR='$ref'"
done
pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
venv="$cache/venv-torch-$BUNDLE_TORCH-py$pyver"
target="$cache/cargo-target-torch-$BUNDLE_TORCH"
tree="$cache/gpu-bundle-build/tree"

# ---- libtorch 2.11 (the PyPI wheel carries it), once per machine ----------------
# numpy is for the checkpoint converter (scripts/convert-checkpoint), so the bundle does
# not need the development venv (.venv) either.
pkgs=("torch==$BUNDLE_TORCH" "numpy<3")
stamp="$venv/.prima-node-ok"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pkgs[*]}" ]; then
  log "creating venv $venv (torch $BUNDLE_TORCH, several GB, one-off)"
  mkdir -p "$cache"
  if [ ! -x "$venv/bin/pip" ]; then
    rm -rf "$venv"
    # Debian's python3 makes a venv only with python3-venv; without it, a half-made one
    # would be taken for made next time.
    python3 -m venv "$venv" || { rm -rf "$venv"; fail "python3 could not make a venv (Debian: apt-get install python3-venv, or scripts/setup.sh --deps)"; }
  fi
  "$venv/bin/pip" install -q "${pkgs[@]}"
  printf '%s' "${pkgs[*]}" > "$stamp"
fi
torch_lib="$("$venv/bin/python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null)"
[ -e "$torch_lib/libtorch.so" ] || { log "no libtorch.so under $venv"; exit 1; }

# ---- the binary: this working tree, tch/torch-sys for libtorch 2.11 --------------
log "copying the working tree to $tree"
rm -rf "$tree"
mkdir -p "$tree"
git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf - | tar -xf - -C "$tree"
sed -i -E "s/^(tch|torch-sys) = \"=[0-9.]+\"/\1 = \"=$BUNDLE_TCH\"/" "$tree/Cargo.toml"
[ "$(grep -cE "^(tch|torch-sys) = \"=$BUNDLE_TCH\"" "$tree/Cargo.toml")" = 2 ] ||
  { log "could not pin tch and torch-sys in Cargo.toml"; exit 1; }
log "building prima-node against libtorch $BUNDLE_TORCH (tch $BUNDLE_TCH; first time: minutes)"
(
  cd "$tree"
  # The pin changes what Cargo.lock names: `cargo fetch` resolves it (changing only the
  # entries the pin touches) and downloads what is not in CARGO_HOME yet, then the build
  # uses exactly that lock and nothing from the network.
  cargo fetch -q
  PATH="$venv/bin:$PATH" LIBTORCH_USE_PYTORCH=1 PRIMA_NODE_NO_RPATH=1 \
    CARGO_TARGET_DIR="$target" cargo build --release --offline --locked -q --bin prima-node
)
bin="$target/release/prima-node"

# ---- the bundle -----------------------------------------------------------------
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
rm -rf "$out"
mkdir -p "$out"
strip -o "$out/prima-node" "$bin"
if readelf -d "$out/prima-node" | grep -qE 'RPATH|RUNPATH'; then
  log "the bundle's binary has an rpath; it would shadow the GPU machine's libtorch"; exit 1
fi
"$venv/bin/python" scripts/convert-checkpoint -q --prima "$ref/models/prima/primafullmodel_fixture.pt" \
  --tokenizer "$ref/models/tokenizer/vqvae_reduced.pth" \
  --tokenizer-config "$ref/models/tokenizer/tokenizer_config.json" --out "$work/fixture-model"
tar czf "$out/fixture-model.tar.gz" -C "$work" fixture-model
tar czf "$out/study-a.tar.gz" -C "$ref/studies" STUDY_A
cp "$ref/expected/STUDY_A/STUDY_A_predictions.json" "$out/"
cp scripts/gpu-bundle/run.sh scripts/gpu-bundle/compare.py scripts/gpu-bundle/summary.py "$out/"
{
  echo "prima-node GPU bundle"
  echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD -- || echo ' (+ uncommitted changes)')"
  echo "built: $(date -u +%FT%TZ) on $(uname -m)"
  echo "libtorch: $BUNDLE_TORCH (tch/torch-sys $BUNDLE_TCH)"
  echo "run: OUT=<dir> ./run.sh   (DEVICE=cuda; TORCH_LIB=<libtorch lib dir>)"
} > "$out/BUNDLE.txt"
size=$(du -sb "$out" | cut -f1)
if [ "$size" -gt "$LIMIT" ]; then
  log "bundle is $size bytes, over the 64 MiB the GPU machine takes"; exit 1
fi
echo "bundle: $out ($((size / 1024 / 1024)) MiB, $size bytes)"

if [ -n "$check" ]; then
  log "running the bundle here on the CPU (libtorch $torch_lib)"
  OUT="$work/check" DEVICE=cpu TORCH_LIB="$torch_lib" "$out/run.sh"
fi
