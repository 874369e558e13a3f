#!/usr/bin/env bash
# Builds the Debian packages (packaging/deb/NOTES.md):
#   scripts/package.sh                 dist/prima-node_<version>_amd64.deb (CPU): release build
#                                      (cargo build --release --locked), then package
#   scripts/package.sh --cuda          dist/prima-node-cuda_<version>_amd64.deb: the same
#                                      binary with the CUDA libtorch (~3 GB); replaces prima-node
#   PRIMA_DEB_VERSION=0.1.0-2 ...      another package version of the same build (upgrade tests)
#   PRIMA_DEB_BINARY=path ...          package this binary instead of building one
#   PRIMA_DEB_OUT=dir ...              where the .deb goes (default dist/)
#   PRIMA_DEB_MAINTAINER="Name <mail>"  the Maintainer field (the site's packager)
#   PRIMA_DEB_COMPRESS=xz|gzip|none    dpkg-deb's compression (default: xz CPU, gzip CUDA)
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
cuda=0
for a in "$@"; do
  case "$a" in
    --test) test_after=1 ;;
    --cuda) cuda=1 ;;
    *) echo "usage: scripts/package.sh [--cuda] [--test]" >&2; exit 2 ;;
  esac
done
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
pkg=prima-node
[ "$cuda" = 1 ] && pkg=prima-node-cuda
deb="$out_dir/${pkg}_${version}_amd64.deb"
# xz -6 of the CPU package's 360 MB takes 3-7 min on two shared cores; of the CUDA
# package's 3 GB it would take ~40. gzip -6 makes it 3% larger than xz -0 in a third of
# the time; zstd would be as fast but lintian counts a zstd member as a malformed package
# (NOTES.md has the measurements).
compress="${PRIMA_DEB_COMPRESS:-$([ "$cuda" = 1 ] && echo gzip || echo xz)}"
level=()
[ "$compress" = gzip ] && level=(-z6)

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
# The CUDA package: also libtorch_cuda.so and what it NEEDs (readelf, transitively), plus
# what is loaded by name at run time rather than NEEDed: cuDNN's sub-libraries (libcudnn.so.9
# is a loader; Prima's 3-D convolutions run in cnn/ops/engines), nvrtc's builtins and
# libcaffe2_nvrtc (libtorch's JIT kernels). Left out: libtorch_cuda_linalg and cuSOLVER
# (linear algebra, not used by Prima; ~0.4 GB) and NVSHMEM's transport plugins (multi-node).
cuda_libs=(
  "torch/lib/libtorch_cuda.so 181dfc4fe86bf8eb4726604ea13b18581b15cf4d5f6e52f538daa41016edc19a"
  "torch/lib/libc10_cuda.so 54da13d79545600a1822a72b179a58295c1915f8ea0194a89066437c3ac48c1a"
  "torch/lib/libtorch_nvshmem.so badf5e3f9fbb9f7b13e198318ffb6ff019808aacf46488ec09843f90a310541a"
  "torch/lib/libcaffe2_nvrtc.so 359285ffd0b1a9509e537a66f68be20317b3c3bcebfcfcd9bd2c030b65cb40fd"
  "nvidia/cu13/lib/libcublas.so.13 25cde432108543626df85d887c730bf2cab96803ca16f9654e4abc8d2b45833e"
  "nvidia/cu13/lib/libcublasLt.so.13 1489aeb75d55ee55782798343ac66f57771d561cc1fe1e0491568deefa0e6515"
  "nvidia/cu13/lib/libcufft.so.12 0933f68bb7e3bf90f86d70bc87cd2f69027f7757e89e5de5e19ec33a53fd8d3a"
  "nvidia/cu13/lib/libcufile.so.0 1ecaf17d38957a41473a7fc8f29d569579e2a9079a26c4d9b89d8da330051483"
  "nvidia/cu13/lib/libcurand.so.10 b53732a66b302b11926e00f762e2c2ba67058347ff93cf4ae709de45e93e06da"
  "nvidia/cu13/lib/libcusparse.so.12 09339f848f60bb1111a61ee0fe91ed0c25132b7ff63298244d7ac14e61b58466"
  "nvidia/cu13/lib/libnvJitLink.so.13 0ba4a7e2c0819291ce928513755f4931dd69c77c63fb77677d14dc1360f28601"
  "nvidia/cu13/lib/libnvrtc.so.13 a49e67e8e74590f1e98de55c39c6287efd3f59e3c3797464d7bbe0fe01349b11"
  "nvidia/cu13/lib/libnvrtc-builtins.so.13.0 91dcd944d01da9c0f08fff5d779db136a47f6d62bdb63bae900d2f481e92c3a2"
  "nvidia/cudnn/lib/libcudnn.so.9 b88025af76979b3f1af208790195093684fe01cb8d190528856058f988016660"
  "nvidia/cudnn/lib/libcudnn_adv.so.9 7702094a50dbea5b8244df01af8e9d3565309d3996bbc8ca96b6c7a207d2d6bd"
  "nvidia/cudnn/lib/libcudnn_cnn.so.9 e830c5cba875ebeb8ed3cfde5cc038a2703692ce714a8a4ff28666ac8e2c5732"
  "nvidia/cudnn/lib/libcudnn_engines_precompiled.so.9 e5133109f710c215d72fdc8f1d9be187f4760f5f32e57cc8c57515ea9e91455e"
  "nvidia/cudnn/lib/libcudnn_engines_runtime_compiled.so.9 28db2a6f433a184e264d927b183c47ecaf72dc65ed58245a6d2380f980e29cd3"
  "nvidia/cudnn/lib/libcudnn_graph.so.9 35c099d318433a88d292775676a51a07d2dd152c3ae799b1c21a75b40f78e456"
  "nvidia/cudnn/lib/libcudnn_heuristic.so.9 a41eb9baa9ccc9e2d6c9f2ca226021b54c8ee2df4abf3a91e41687847b481228"
  "nvidia/cudnn/lib/libcudnn_ops.so.9 705d3dcf9b209fdbeeecd8aaec5fcd0f6f55de5661e1c1388b5a4b8fd29db7c3"
  "nvidia/nccl/lib/libnccl.so.2 aa957cdfb91b516eae0d54a28e9ee5db52730d02e0ab45580efc3c19a68327a4"
  "nvidia/cusparselt/lib/libcusparseLt.so.0 e2bcea98434bdfc6399b5e0d1db14178079df62f9527c183c835a7ae196d5685"
  "nvidia/nvshmem/lib/libnvshmem_host.so.3 c43004bb93053aa70603a204fe0c9052bdd29f38822d3048599183f8d5930d8f"
)
[ "$cuda" = 1 ] && libs+=("${cuda_libs[@]}")
# Needed by a shipped library but deliberately not from Debian: the NVIDIA driver's
# libcuda.so.1 (the site installs the driver; without it CUDA is simply unavailable).
# Only libcaffe2_nvrtc.so, which libtorch opens on first use of a JIT kernel, NEEDs it.
from_driver=libcuda.so.1

t0=$(date +%s)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"
libdir="$root/usr/lib/prima-node"
doc="$root/usr/share/doc/$pkg"
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$libdir" "$doc" "$root/usr/share/man/man1" \
  "$root/etc/prima-node" "$root/lib/systemd/system" "$root/usr/share/lintian/overrides"

for entry in "${libs[@]}"; do
  rel="${entry% *}"; sum="${entry#* }"
  echo "$sum  $site/$rel" | sha256sum -c --quiet - || die "$rel differs from the pinned file"
  install -m 0644 "$site/$rel" "$libdir/"
done
for f in "$libdir"/*.so*; do
  # Symbol tables only: the dynamic symbols stay. Before patchelf, which may move sections
  # that strip would then rewrite.
  strip --strip-unneeded --remove-section=.comment "$f"
  # The wheel's rpaths point into the venv's nvidia/ tree; here everything sits together.
  # A library without one NEEDs only system libraries (checked below): left as built.
  if readelf -d "$f" | grep -qE '\((RPATH|RUNPATH)\)'; then
    patchelf --set-rpath '$ORIGIN' "$f"
  fi
done
# The shim's only job in a CUDA build is to load libtorch_cuda; the CPU package has none.
[ "$cuda" = 1 ] || patchelf --remove-needed libtorch_cuda.so "$libdir/libtorch.so"

install -m 0755 "$bin" "$root/usr/bin/prima-node"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$root/usr/bin/prima-node"
# build.rs embeds the venv's directory as DT_RPATH; patchelf writes DT_RUNPATH.
patchelf --set-rpath /usr/lib/prima-node "$root/usr/bin/prima-node"

# Every NEEDED must be shipped here or come from a Debian package on the system.
for f in "$root/usr/bin/prima-node" "$libdir"/*.so*; do
  for n in $(patchelf --print-needed "$f"); do
    [ -e "$libdir/$n" ] && continue
    [ "$n" = "$from_driver" ] && continue
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
  # The same text in both packages: the conffile passes from one to the other unchanged.
  echo "# model in [model] dir (README.md.gz in /usr/share/doc/prima-node or prima-node-cuda,"
  echo "# \"Install on a server\")."
  tail -n +2 conf/prima-node.toml
} > "$root/etc/prima-node/prima-node.toml"
chmod 0644 "$root/etc/prima-node/prima-node.toml"
grep -q '^state_dir = "/var/lib/prima-node"$' "$root/etc/prima-node/prima-node.toml" \
  || die "conf/prima-node.toml no longer names /var/lib/prima-node"
echo /etc/prima-node/prima-node.toml > "$root/DEBIAN/conffiles"

sed "s|^Documentation=.*|Documentation=man:prima-node(1) file:///usr/share/doc/$pkg/README.md.gz|" \
  systemd/prima-node.service > "$root/lib/systemd/system/prima-node.service"
chmod 0644 "$root/lib/systemd/system/prima-node.service"

# The checkpoint converter `prima-node model import` runs (src/model/import.rs) with the
# system's python3 and numpy: Recommends, not Depends (NOTES.md).
install -d "$root/usr/lib/prima-node/convert"
install -m 0755 scripts/convert-checkpoint "$root/usr/lib/prima-node/convert/"
install -m 0644 scripts/prima_convert.py scripts/prima_unpickle.py "$root/usr/lib/prima-node/convert/"

install -m 0755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$root/DEBIAN/"
{
  sed "s/^prima-node:/$pkg:/" packaging/deb/lintian-overrides
  if [ "$cuda" = 1 ]; then cat packaging/deb/lintian-overrides-cuda; fi
} > "$root/usr/share/lintian/overrides/$pkg"
chmod 0644 "$root/usr/share/lintian/overrides/$pkg"

# Copyright: ours, then the licences of the libraries shipped, as their wheels carry them.
{
  cat packaging/deb/copyright
  # nvidia-cuda-cupti's wheel carries the same EULA text as nvidia-cuda-runtime's.
  cmp -s "$site"/nvidia_cuda_runtime-*.dist-info/licenses/License.txt \
    "$site"/nvidia_cuda_cupti-*.dist-info/licenses/License.txt || die "CUPTI's licence text changed"
  texts=("$site"/torch-*.dist-info/licenses/LICENSE
         "$site"/nvidia_cuda_runtime-*.dist-info/licenses/License.txt)
  # Most CUDA wheels carry that same EULA; cuDNN, NCCL, NVTX and cuSPARSELt their own.
  [ "$cuda" = 1 ] && texts+=("$site"/nvidia_cudnn_cu13-*.dist-info/licenses/License.txt
                              "$site"/nvidia_nccl_cu13-*.dist-info/licenses/License.txt
                              "$site"/nvidia/cusparselt/LICENSE.txt)
  for f in "${texts[@]}"; do
    [ -f "$f" ] || die "licence text $f missing"
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
  echo "See /usr/share/doc/$pkg/README.md.gz."
  for sub in "" serve check-config status synth-study infer "model demo" "model import" prepare; do
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
printf 'Source: prima-node\n\nPackage: %s\nArchitecture: amd64\n' "$pkg" > "$work/shlibs/debian/control"
# The libraries that NEED the driver's libcuda are left out: dpkg-shlibdeps would look for
# it in Debian (their other NEEDED are those of the rest).
mapfile -t elfs < <(for f in "$libdir"/*.so*; do
  patchelf --print-needed "$f" | grep -qx "$from_driver" || echo "$f"; done)
shlibs="$(cd "$work/shlibs" && dpkg-shlibdeps -O -l"$libdir" "$root/usr/bin/prima-node" "${elfs[@]}" 2>"$work/shlibdeps.log")" \
  || { cat "$work/shlibdeps.log" >&2; die "dpkg-shlibdeps failed"; }
depends="${shlibs#shlibs:Depends=}"
installed_kb="$(du -sk --exclude=DEBIAN "$root" | cut -f1)"
if [ "$cuda" = 1 ]; then
  # One or the other: same files, same service, same state. Replaces lets the files and the
  # conffile pass from one to the other; /var/lib/prima-node is no package's file and stays.
  relations="Conflicts: prima-node
Replaces: prima-node
Provides: prima-node"
  summary="NVIDIA GPU (CUDA 13)"
  flavour=" This package runs the model on an NVIDIA GPU (CUDA 13; the NVIDIA driver,
 570 or newer, is not included) and on the CPU where none is usable. It carries
 the CUDA libtorch and NVIDIA libraries it needs in /usr/lib/prima-node and a
 systemd unit (not enabled on install)."
else
  relations="Conflicts: prima-node-cuda
Replaces: prima-node-cuda"
  summary="CPU"
  flavour=" This package runs the model on the CPU. It carries the libtorch libraries it
 needs in /usr/lib/prima-node and a systemd unit (not enabled on install)."
fi
cat > "$root/DEBIAN/control" <<EOF
Package: $pkg
Version: $version
Architecture: amd64
Maintainer: $maintainer
Installed-Size: $installed_kb
Depends: adduser, $depends
Recommends: python3, python3-numpy
$relations
Section: science
Priority: optional
Description: DICOM node running the Prima brain-MRI model ($summary)
 prima-node receives MR studies from a PACS (DICOM C-STORE), runs the Prima
 brain-MRI foundation model on each complete study and sends the findings back
 as a Structured Report and a Key Object Selection (C-STORE).
 .
$flavour
 The model is not included: "prima-node model import" converts the upstream
 checkpoints (with python3 and numpy, executing nothing from the files); see
 /usr/share/doc/$pkg/README.md.gz.
EOF

(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
  | xargs -0 md5sum) > "$work/md5sums"
mv "$work/md5sums" "$root/DEBIAN/md5sums"

mkdir -p "$out_dir"
rm -f "$deb"
log "dpkg-deb --build ($compress)"
t1=$(date +%s)
dpkg-deb --root-owner-group -Z"$compress" "${level[@]}" --build "$root" "$deb" >/dev/null
log "compressed in $(( $(date +%s) - t1 )) s"
log "built $deb ($(du -h "$deb" | cut -f1), installed $((installed_kb / 1024)) MB) in $(( $(date +%s) - t0 )) s"
echo "$deb"
if [ "$test_after" = 1 ]; then
  log "testing $deb in a clean Debian root"
  var=PRIMA_DEB
  [ "$cuda" = 1 ] && var=PRIMA_DEB_CUDA
  env "$var=$deb" PRIMA_REQUIRE_DEB=1 cargo test --locked --features stand-in \
    --test package_debian -- --nocapture --test-threads=1 >&2
fi
