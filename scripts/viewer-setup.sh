#!/usr/bin/env bash
# Installs what the real-viewer harness (integration-tests/viewer/) needs: Orthanc with its
# DICOMweb plugin (Debian), Chromium (Debian), the prebuilt OHIF Viewer dist from npm, and
# Playwright for Python in the project's venv. Idempotent: each step checks first and says
# what it found or did. Pinned, so a viewer behaviour we test against does not move under us.
#
# Downloads go under ~/.cache/prima-node/, never into the repository.
set -euo pipefail

OHIF_VERSION="3.13.2"
PLAYWRIGHT_VERSION="1.65.3"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PRIMA_CACHE_DIR:-$HOME/.cache/prima-node}"
ohif_dir="$cache/ohif-$OHIF_VERSION"
pip="$root/.venv/bin/pip"
python="$root/.venv/bin/python"

say() { printf 'viewer-setup: %s\n' "$*"; }

# --- Debian packages --------------------------------------------------------------------
missing=()
for pkg in orthanc orthanc-dicomweb chromium; do
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    say "$pkg: installed ($(dpkg-query -W -f='${Version}' "$pkg"))"
  else
    missing+=("$pkg")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  say "apt-get install ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian orthanc package enables a system service; the harness runs its own instance on
# free ports, so the service is left as the package set it.

# --- OHIF prebuilt dist -----------------------------------------------------------------
if [ -f "$ohif_dir/dist/index.html" ]; then
  say "OHIF $OHIF_VERSION: present in $ohif_dir/dist"
else
  command -v npm >/dev/null || { say "npm is needed to fetch @ohif/app (apt-get install npm)"; exit 1; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  say "npm pack @ohif/app@$OHIF_VERSION (in $tmp)"
  (cd "$tmp" && npm pack --silent "@ohif/app@$OHIF_VERSION" >/dev/null)
  tarball="$(ls "$tmp"/ohif-app-*.tgz)"
  tar -xzf "$tarball" -C "$tmp" package/dist
  [ -f "$tmp/package/dist/index.html" ] || { say "no dist/index.html in $tarball"; exit 1; }
  mkdir -p "$ohif_dir"
  rm -rf "$ohif_dir/dist.partial"
  mv "$tmp/package/dist" "$ohif_dir/dist.partial"
  # Rename last so a half-unpacked dist is never taken for a complete one.
  mv "$ohif_dir/dist.partial" "$ohif_dir/dist"
  say "OHIF $OHIF_VERSION: unpacked into $ohif_dir/dist"
fi

# --- Playwright for Python --------------------------------------------------------------
# Only the Python package (its wheel ships the driver); the browser is Debian's Chromium,
# passed by executable_path, so no `playwright install` download is needed.
have="$("$python" -c 'import importlib.metadata as m; print(m.version("playwright"))' 2>/dev/null || true)"
if [ "$have" = "$PLAYWRIGHT_VERSION" ]; then
  say "playwright $PLAYWRIGHT_VERSION: installed in the venv"
else
  say "pip install playwright==$PLAYWRIGHT_VERSION (had: ${have:-none})"
  "$pip" install -q "playwright==$PLAYWRIGHT_VERSION"
fi

say "done"
