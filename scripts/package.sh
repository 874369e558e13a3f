#!/usr/bin/env bash
# Builds the CPU Debian package: dist/prima-node_<version>_amd64.deb (packaging/deb/NOTES.md).
#   scripts/package.sh                 release build (cargo build --release --locked), then package
#   PRIMA_DEB_VERSION=0.1.0-2 ...      another package version of the same build (upgrade tests)
#   PRIMA_DEB_BINARY=path ...          package this binary instead of building one
#   PRIMA_DEB_OUT=dir ...              where the .deb goes (default dist/)
#   PRIMA_DEB_MAINTAINER="Name <mail>"  the Maintainer field (the site's packager)
#   scripts/package.sh --test          then test it in a clean Debian root
#                                      (integration-tests/package_debian.rs, needs root)
# Prints the .deb's path on its last line.
#
# dpkg-deb, not cargo-deb: the package carries libtorch libraries that must be patched
# (RUNPATH, the CUDA shim's NEEDED) and checked against pinned digests, and maintainer
# scripts written by hand; cargo-deb would only add a tool to install while doing none of
# that. dpkg-deb is part of dpkg, on every Debian machine.
set -euo pipefail
test_after=0
[ "${1:-}" = "--test" ] && test_after=1
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
# shellcheck source=scripts/env.sh
. scripts/env.sh

log() { printf '[package] %s\n' "$*" >&2; }
die() { printf '[package] error: %s\n' "$*" >&2; exit 1; }

for t in dpkg-deb patchelf dpkg-shlibdeps strip; do
  command -v "$t" >/dev/null || die "$t missing (apt-get install dpkg-dev patchelf binutils)"
done

cargo_version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
version="${PRIMA_DEB_VERSION:-$cargo_version-1}"
maintainer="${PRIMA_DEB_MAINTAINER:-prima-node maintainers <prima-node@example.org>}"
out_dir="${PRIMA_DEB_OUT:-$here/dist}"
deb="$out_dir/prima-node_${version}_amd64.deb"

# ---- the binary ----------------------------------------------------------------
if [ -n "${PRIMA_DEB_BINARY:-}" ]; then
  bin="$PRIMA_DEB_BINARY"
else
  log "cargo build --release --locked"
  cargo build --release --locked 2>&1 | tail -n 2 >&2
  bin="$CARGO_TARGET_DIR/release/prima-node"
fi
[ -x "$bin" ] || die "no binary at $bin"

# ---- libtorch: what the binary needs, from the pinned torch wheel ----------------
# The venv's torch 2.13.0 wheel (scripts/setup.sh) is built with CUDA: libtorch.so links
# libtorch_cuda.so (and through it ~3 GB of NVIDIA libraries), and libtorch_cpu.so itself
# links the CUDA runtime and CUPTI (the profiler), both small and loadable without a GPU or
# driver. The CPU package carries libtorch_cpu, c10, libgomp, cudart, cupti, and libtorch.so
# with its libtorch_cuda.so dependency removed: libtorch.so defines nothing the binary
# uses (it exists to pull CUDA in); without libtorch_cuda, libtorch reports no CUDA device
# and the node runs on the CPU (see [model] device). A CPU-only libtorch
# (download.pytorch.org) would drop cudart and cupti (~5 MB) but that host is not reachable
# from the build machines; these digests pin the exact files shipped.
venv="$(readlink -f .venv)"
site="$(echo "$venv"/lib/python3.*/site-packages)"
[ -d "$site/torch/lib" ] || die "no torch venv at $venv (run scripts/setup.sh --deps)"
libs=(
  "torch/lib/libtorch.so 29c72a63050601514ff9af6399bb027ee8b4030b97017579458d16ceac90d999"
  "torch/lib/libtorch_cpu.so 096eed6e217377ccda4d50693b680e2771709c01f58fe52717835b017fed9c58"
  "torch/lib/libc10.so b83ea50e9171c7e3455c19f9ff2c7d21d457a7b8231e9c4ea1b6e032ae1156d5"
  "torch/lib/libgomp.so.1 e28fb2896a3d612b46a27d7f8ef840d34c9efbc29b70a044c42095fb94856890"
  "nvidia/cu13/lib/libcudart.so.13 96c42e418cec19054186b9429c321603cc190bf26a18104e19408117a2a817b0"
  "nvidia/cu13/lib/libcupti.so.13 e2f9ed861fe27c492b8bb52b5e3220ef5120f3edcda36312e96b7fd8a186be3e"
)

t0=$(date +%s)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
libdir="$root/usr/lib/prima-node"
doc="$root/usr/share/doc/prima-node"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$libdir" "$doc" "$root/usr/share/man/man1" \
  "$root/etc/prima-node" "$root/lib/systemd/system" "$root/usr/share/lintian/overrides"

for entry in "${libs[@]}"; do
  rel="${entry% *}"; sum="${entry#* }"
  echo "$sum  $site/$rel" | sha256sum -c --quiet - || die "$rel differs from the pinned file"
  install -m 0644 "$site/$rel" "$libdir/"
done
for f in "$libdir"/*; do
  # Symbol tables only: the dynamic symbols stay. Before patchelf, which may move sections
  # that strip would then rewrite.
  strip --strip-unneeded --remove-section=.comment "$f"
  # The wheel's rpaths point into the venv's nvidia/ tree; here everything sits together.
  patchelf --set-rpath '$ORIGIN' "$f"
done
# The shim's only job in a CUDA build is to load libtorch_cuda.
patchelf --remove-needed libtorch_cuda.so "$libdir/libtorch.so"

install -m 0755 "$bin" "$root/usr/bin/prima-node"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/prima-node"
# build.rs embeds the venv's directory as DT_RPATH; patchelf writes DT_RUNPATH.
patchelf --set-rpath /usr/lib/prima-node "$root/usr/bin/prima-node"

# Every NEEDED must be shipped here or come from a Debian package on the system.
for f in "$root/usr/bin/prima-node" "$libdir"/*; do
  for n in $(patchelf --print-needed "$f"); do
    [ -e "$libdir/$n" ] && continue
    ldconfig -p | awk -v n="$n" '$1 == n { f = 1 } END { exit !f }' || die "$(basename "$f") needs $n: neither shipped nor on the system"
    dpkg -S "*/$n" >/dev/null 2>&1 || die "$(basename "$f") needs $n, which no Debian package ships"
  done
done

# ---- files -----------------------------------------------------------------------
# The configuration: the repository's example, which already names the server's paths.
{
  echo "# prima-node configuration, installed by the prima-node package (a conffile: your"
  echo "# changes are kept on upgrade). Validate with:"
  echo "#   prima-node check-config /etc/prima-node/prima-node.toml"
  echo "# Before starting the service, set [[sources]] and [[destinations]] to your PACS and put a"
  echo "# model in [model] dir (/usr/share/doc/prima-node/README.md.gz, \"Install on a server\")."
  tail -n +2 conf/prima-node.toml
} > "$root/etc/prima-node/prima-node.toml"
chmod 0644 "$root/etc/prima-node/prima-node.toml"
grep -q '^state_dir = "/var/lib/prima-node"$' "$root/etc/prima-node/prima-node.toml" \
  || die "conf/prima-node.toml no longer names /var/lib/prima-node"
echo /etc/prima-node/prima-node.toml > "$root/DEBIAN/conffiles"

sed 's|^Documentation=.*|Documentation=man:prima-node(1) file:///usr/share/doc/prima-node/README.md.gz|' \
  systemd/prima-node.service > "$root/lib/systemd/system/prima-node.service"
chmod 0644 "$root/lib/systemd/system/prima-node.service"

install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
install -m 0644 packaging/deb/lintian-overrides "$root/usr/share/lintian/overrides/prima-node"

# Copyright: ours, then the licences of the libraries shipped, as their wheels carry them.
{
  cat packaging/deb/copyright
  # nvidia-cuda-cupti's wheel carries the same EULA text as nvidia-cuda-runtime's.
  cmp -s "$site"/nvidia_cuda_runtime-*.dist-info/licenses/License.txt \
    "$site"/nvidia_cuda_cupti-*.dist-info/licenses/License.txt || die "CUPTI's licence text changed"
  for f in "$site"/torch-*.dist-info/licenses/LICENSE \
           "$site"/nvidia_cuda_runtime-*.dist-info/licenses/License.txt; do
    printf '\n--------------------------------------------------------------------------\n'
    printf 'Text of %s (from its wheel):\n\n' "${f#"$site"/}"
    sed 's/[[:space:]]*$//' "$f"
  done
} > "$doc/copyright"
chmod 0644 "$doc/copyright"

date_r="$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct)}")"
{
  echo "prima-node ($version) unstable; urgency=medium"
  echo
  echo "  * Built from commit $(git rev-parse --short HEAD) of prima-node (git log has the"
  echo "    changes)."
  echo
  echo " -- $maintainer  $date_r"
} | gzip -9n > "$doc/changelog.Debian.gz"
gzip -9n < README.md > "$doc/README.md.gz"
chmod 0644 "$doc"/*.gz

# Man page: the --help of the command and of each subcommand.
{
  echo ".TH PRIMA-NODE 1 \"$(date -u -d "$date_r" +%Y-%m-%d)\" \"prima-node $version\" \"User Commands\""
  echo ".SH NAME"
  echo "prima-node \\- DICOM node that runs the Prima brain-MRI model and returns SR and KOS results"
  echo ".SH DESCRIPTION"
  echo "The service runs \\fBprima-node serve \\-\\-config /etc/prima-node/prima-node.toml\\fR"
  echo "(systemd unit prima-node.service). State: /var/lib/prima-node."
  echo "See /usr/share/doc/prima-node/README.md.gz."
  for sub in "" serve check-config status synth-study infer "model demo" prepare; do
    echo ".SH \"${sub:-USAGE}\"" | tr '[:lower:]' '[:upper:]'
    echo ".nf"
    # shellcheck disable=SC2086
    "$bin" $sub --help | sed -e 's/\\/\\e/g' -e 's/^\./\\\&./' -e "s/^'/\\\\\\&'/"
    echo ".fi"
  done
} | gzip -9n > "$root/usr/share/man/man1/prima-node.1.gz"
chmod 0644 "$root/usr/share/man/man1/prima-node.1.gz"

# ---- control -------------------------------------------------------------------------
mkdir -p "$work/shlibs/debian"
printf 'Source: prima-node\n\nPackage: prima-node\nArchitecture: amd64\n' > "$work/shlibs/debian/control"
shlibs="$(cd "$work/shlibs" && dpkg-shlibdeps -O -l"$libdir" "$root/usr/bin/prima-node" "$libdir"/* 2>"$work/shlibdeps.log")" \
  || { cat "$work/shlibdeps.log" >&2; die "dpkg-shlibdeps failed"; }
depends="${shlibs#shlibs:Depends=}"
installed_kb="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
cat > "$root/DEBIAN/control" <<EOF
Package: prima-node
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $installed_kb
Depends: adduser, $depends
Section: science
Priority: optional
Description: DICOM node running the Prima brain-MRI model (CPU)
 prima-node receives MR studies from a PACS (DICOM C-STORE), runs the Prima
 brain-MRI foundation model on each complete study and sends the findings back
 as a Structured Report and a Key Object Selection (C-STORE).
 .
 This package runs the model on the CPU. It carries the libtorch libraries it
 needs in /usr/lib/prima-node and a systemd unit (not enabled on install).
 The model is not included: see /usr/share/doc/prima-node/README.md.gz.
EOF

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum) > "$work/md5sums"
mv "$work/md5sums" "$root/DEBIAN/md5sums"

mkdir -p "$out_dir"
rm -f "$deb"
log "dpkg-deb --build (xz)"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
log "built $deb ($(du -h "$deb" | cut -f1), installed $((installed_kb / 1024)) MB) in $(( $(date +%s) - t0 )) s"
echo "$deb"
if [ "$test_after" = 1 ]; then
  log "testing $deb in a clean Debian root"
  PRIMA_DEB="$deb" PRIMA_REQUIRE_DEB=1 cargo test --locked --features stand-in \
    --test package_debian -- --nocapture --test-threads=1 >&2
fi
