#!/usr/bin/env bash
# Install Triton's perf_analyzer into <repo>/.tools/perf_analyzer/ so that it
# runs on this Debian 12 (bookworm, glibc 2.36) machine.
#
# The real perf_analyzer wheels on PyPI (perf-analyzer >= 2.58) are tagged
# manylinux_2_38_x86_64: the binary needs glibc >= 2.38 (__isoc23_* symbols)
# and libstdc++ from GCC >= 13 (GLIBCXX_3.4.32). Plain `pip install
# perf-analyzer` therefore resolves to the useless 0.1.0 placeholder here.
#
# What this script does (all inside .tools/perf_analyzer/, nothing system-wide):
#   1. pip-downloads the pinned wheel for platform manylinux_2_38_x86_64 and
#      checks its sha256, then unzips it to wheel/.
#   2. With a private APT configuration (own sources.list, lists, cache and
#      status file; the machine's apt sources and state are not touched),
#      `apt-get download`s Debian 13 (trixie) runtime libraries
#      (libc6 incl. its dynamic loader, libstdc++6, libgcc-s1, libssl3t64,
#      zlib1g, libzstd1) and `dpkg -x`es them into root/.
#   2b. pip-downloads the pinned nvidia-cuda-runtime-cu12 wheel (sha256 checked)
#      and puts its libcudart.so.12 (+ a libcudart.so link) into root/:
#      perf_analyzer dlopen()s "libcudart.so" as soon as any --shared-memory
#      mode is used, system included, and aborts without it. No GPU is needed:
#      the CUDA functions are called only for --shared-memory cuda.
#   3. Writes bin/perf_analyzer, a wrapper that starts the binary through
#      trixie's loader with --inhibit-cache --library-path <root libs>.
#   4. Verifies every shared library resolves inside root/ and that
#      `perf_analyzer --version` runs.
#
# Idempotent: a second run with the same inputs only re-verifies (~1 s).
#
# Usage: benchmarks/tools/install_perf_analyzer.sh [--force]
# Env:   PA_VERSION        wheel version (default 2.60.0)
#        PA_WHEEL_SHA256   expected wheel sha256 (known for the default version;
#                          checked only when known)
#        PA_HOME           install dir (default <repo>/.tools/perf_analyzer)
#        DEBIAN_MIRROR     default http://deb.debian.org/debian
#        DEBIAN_SUITE      default trixie
#        PYTHON            python with pip (default: <repo>/.venv/bin/python, else python3)

set -euo pipefail

die() { echo "install_perf_analyzer: ERROR: $*" >&2; exit 1; }
log() { echo "install_perf_analyzer: $*" >&2; }

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,/^$/p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument '$arg' (use --force or --help)" ;;
  esac
done

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/../.." && pwd)

DEFAULT_PA_VERSION=2.60.0
DEFAULT_PA_SHA256=23ef56b107ae9233e5cf09fbdf508dd9b936a52f1bae2f63f53c8117087b3f25
PA_VERSION=${PA_VERSION:-$DEFAULT_PA_VERSION}
if [[ -z "${PA_WHEEL_SHA256:-}" && "$PA_VERSION" == "$DEFAULT_PA_VERSION" ]]; then
  PA_WHEEL_SHA256=$DEFAULT_PA_SHA256
fi
PA_WHEEL_SHA256=${PA_WHEEL_SHA256:-}
PA_HOME=${PA_HOME:-$REPO_ROOT/.tools/perf_analyzer}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_SUITE=${DEBIAN_SUITE:-trixie}
# Runtime libraries perf_analyzer 2.60 needs (NEEDED: libz libssl libcrypto
# libstdc++ libm libgcc_s libc ld-linux; libssl needs libzstd). Taken all from
# the same suite so nothing is resolved from the host's older libraries.
DEB_PACKAGES=(libc6 libstdc++6 libgcc-s1 libssl3t64 zlib1g libzstd1)
# libcudart for --shared-memory (see 2b above).
CUDART_VERSION=12.9.79
CUDART_SHA256=25bba2dfb01d48a9b59ca474a1ac43c6ebf7011f1b0b8cc44f54eb6ac48a96c3
KEYRINGS=/usr/share/keyrings/debian-archive-${DEBIAN_SUITE}-stable.gpg,/usr/share/keyrings/debian-archive-${DEBIAN_SUITE}-automatic.gpg

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then PYTHON=$REPO_ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

[[ "$(uname -m)" == x86_64 ]] || die "only x86_64 is supported (wheel is manylinux_2_38_x86_64)"
for tool in apt-get dpkg sha256sum flock "$PYTHON"; do
  command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found"
done
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work; set PYTHON to a python with pip"
for kr in ${KEYRINGS//,/ }; do
  [[ -r "$kr" ]] || die "Debian archive keyring $kr missing (package debian-archive-keyring >= 2023.3+deb12u1 has the trixie keys)"
done

STAMP="pa=$PA_VERSION sha=$PA_WHEEL_SHA256 suite=$DEBIAN_SUITE mirror=$DEBIAN_MIRROR debs=${DEB_PACKAGES[*]} cudart=$CUDART_VERSION layout=2"

PARENT=$(dirname "$PA_HOME")
mkdir -p "$PARENT"
exec 9>"$PARENT/.$(basename "$PA_HOME").lock"
flock -w 300 9 || die "another install is running (lock $PARENT/.$(basename "$PA_HOME").lock)"

# verify DIR: all libraries resolve inside DIR/root and --version runs.
verify() {
  local dir=$1 lib=$1/root/usr/lib/x86_64-linux-gnu out bad
  [[ -x "$dir/bin/perf_analyzer" ]] || { echo "wrapper missing"; return 1; }
  out=$("$lib/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$lib" \
        --list "$dir/wheel/perf_analyzer/bin/perf_analyzer" 2>&1) || { echo "$out"; return 1; }
  bad=$(echo "$out" | grep -v 'linux-vdso' | grep -v "=> $dir/root/" || true)
  if [[ -n "$bad" ]]; then echo "libraries not resolved from the private root:"; echo "$bad"; return 1; fi
  [[ -f "$lib/libcudart.so.12" && -L "$lib/libcudart.so" ]] || { echo "libcudart.so missing (--shared-memory)"; return 1; }
  out=$("$dir/bin/perf_analyzer" --version 2>&1) || { echo "$out"; return 1; }
  [[ "$out" == *"Perf Analyzer Version"* ]] || { echo "unexpected --version output: $out"; return 1; }
  return 0
}

if [[ $FORCE == 0 && -f "$PA_HOME/.stamp" && "$(cat "$PA_HOME/.stamp")" == "$STAMP" ]]; then
  if msg=$(verify "$PA_HOME"); then
    log "already installed: $PA_HOME/bin/perf_analyzer ($("$PA_HOME/bin/perf_analyzer" --version 2>&1))"
    exit 0
  fi
  log "existing install fails verification, reinstalling: $msg"
fi

STAGE=$(mktemp -d "$PARENT/.$(basename "$PA_HOME").stage.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT

# ---- 1. the wheel -----------------------------------------------------------
log "downloading perf-analyzer==$PA_VERSION (manylinux_2_38_x86_64) from PyPI"
mkdir -p "$STAGE/dl"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux_2_38_x86_64 --python-version 3.11 \
    -d "$STAGE/dl" "perf-analyzer==$PA_VERSION" 2> >(grep -v "^WARNING: Location 'file:" >&2) \
  || die "pip download perf-analyzer==$PA_VERSION failed (versions that exist: 2.58.0 2.59.0 2.59.1 2.60.0; 0.1.0 is a placeholder)"
WHEEL=$(ls "$STAGE"/dl/perf_analyzer-"$PA_VERSION"-*.whl 2>/dev/null | head -1)
[[ -n "$WHEEL" ]] || die "no perf_analyzer-$PA_VERSION wheel was downloaded"
if [[ -n "$PA_WHEEL_SHA256" ]]; then
  echo "$PA_WHEEL_SHA256  $WHEEL" | sha256sum -c --quiet - >/dev/null 2>&1 \
    || die "sha256 mismatch for $(basename "$WHEEL"): got $(sha256sum "$WHEEL" | cut -d' ' -f1), want $PA_WHEEL_SHA256"
fi
"$PYTHON" -m zipfile -e "$WHEEL" "$STAGE/wheel" || die "cannot unzip $WHEEL"
BIN=$STAGE/wheel/perf_analyzer/bin/perf_analyzer
[[ -f "$BIN" ]] || die "wheel has no perf_analyzer/bin/perf_analyzer (is $PA_VERSION a real release?)"
chmod +x "$BIN"

# ---- 2. trixie runtime libraries via a private APT configuration ------------
A=$STAGE/apt
mkdir -p "$A/etc/apt.conf.d" "$A/etc/preferences.d" "$A/etc/sources.list.d" \
         "$A/state/lists/partial" "$A/cache/archives/partial" "$A/log" "$STAGE/debs"
: > "$A/state/status"
echo "deb [signed-by=$KEYRINGS] $DEBIAN_MIRROR $DEBIAN_SUITE main" > "$A/etc/sources.list"
# APT_CONFIG is read first; Dir::Etc points every later config lookup (parts
# dir, main file, sources, preferences) into the private tree, so neither the
# machine's /etc/apt nor /var/lib/apt nor /var/cache/apt is read or written.
cat > "$A/apt.conf" <<EOF
Dir::Etc "$A/etc";
Dir::Etc::main "$A/etc/apt.conf";
Dir::Etc::parts "$A/etc/apt.conf.d";
Dir::Etc::sourcelist "$A/etc/sources.list";
Dir::Etc::sourceparts "$A/etc/sources.list.d";
Dir::Etc::preferences "$A/etc/preferences";
Dir::Etc::preferencesparts "$A/etc/preferences.d";
Dir::State "$A/state";
Dir::State::lists "$A/state/lists";
Dir::State::status "$A/state/status";
Dir::Cache "$A/cache";
Dir::Cache::archives "$A/cache/archives";
Dir::Log "$A/log";
APT::Architecture "amd64";
APT::Architectures { "amd64"; };
Acquire::Languages "none";
APT::Sandbox::User "$(id -un)";
EOF
apt_private() { APT_CONFIG="$A/apt.conf" apt-get -q -o Dir::Etc::sourcelist="$A/etc/sources.list" \
  -o Dir::Etc::sourceparts="$A/etc/sources.list.d" -o Dir::State::Lists="$A/state/lists" \
  -o Dir::Cache="$A/cache" "$@"; }
log "fetching $DEBIAN_SUITE package index from $DEBIAN_MIRROR (private APT state)"
apt_private --error-on=any update >"$A/update.log" 2>&1 \
  || { cat "$A/update.log" >&2; die "apt-get update for $DEBIAN_SUITE failed"; }
log "downloading ${DEB_PACKAGES[*]}"
(cd "$STAGE/debs" && apt_private download "${DEB_PACKAGES[@]}") >"$A/download.log" 2>&1 \
  || { cat "$A/download.log" >&2; die "apt-get download of ${DEB_PACKAGES[*]} failed"; }
mkdir -p "$STAGE/root"
: > "$STAGE/MANIFEST"
echo "perf-analyzer $PA_VERSION $(basename "$WHEEL") sha256=$(sha256sum "$WHEEL" | cut -d' ' -f1)" >> "$STAGE/MANIFEST"
for deb in "$STAGE"/debs/*.deb; do
  dpkg -x "$deb" "$STAGE/root" || die "dpkg -x $deb failed"
  echo "$(dpkg-deb -f "$deb" Package) $(dpkg-deb -f "$deb" Version) ($DEBIAN_SUITE)" >> "$STAGE/MANIFEST"
done
[[ -x "$STAGE/root/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ]] || die "trixie libc6 has no loader at usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"

# ---- 2b. libcudart (dlopen()ed by every --shared-memory mode) -----------------
log "downloading nvidia-cuda-runtime-cu12==$CUDART_VERSION (libcudart for --shared-memory)"
mkdir -p "$STAGE/cudart"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --platform manylinux2014_x86_64 --python-version 3.11 \
    -d "$STAGE/cudart" "nvidia-cuda-runtime-cu12==$CUDART_VERSION" 2> >(grep -v "^WARNING: Location 'file:" >&2) \
  || die "pip download nvidia-cuda-runtime-cu12==$CUDART_VERSION failed"
CUDART_WHEEL=$(ls "$STAGE"/cudart/nvidia_cuda_runtime_cu12-*.whl 2>/dev/null | head -1)
[[ -n "$CUDART_WHEEL" ]] || die "no nvidia-cuda-runtime-cu12 wheel was downloaded"
echo "$CUDART_SHA256  $CUDART_WHEEL" | sha256sum -c --quiet - >/dev/null 2>&1 \
  || die "sha256 mismatch for $(basename "$CUDART_WHEEL"): got $(sha256sum "$CUDART_WHEEL" | cut -d' ' -f1)"
"$PYTHON" -m zipfile -e "$CUDART_WHEEL" "$STAGE/cudart/x" || die "cannot unzip $CUDART_WHEEL"
LIBDIR=$STAGE/root/usr/lib/x86_64-linux-gnu
cp "$STAGE/cudart/x/nvidia/cuda_runtime/lib/libcudart.so.12" "$LIBDIR/" || die "the wheel has no libcudart.so.12"
ln -sf libcudart.so.12 "$LIBDIR/libcudart.so"
echo "nvidia-cuda-runtime-cu12 $CUDART_VERSION (libcudart.so.12)" >> "$STAGE/MANIFEST"

rm -rf "$STAGE/dl" "$STAGE/debs" "$STAGE/cudart" "$A/cache" "$A/state/lists"   # keep only what runs (+ apt logs)

# ---- 3. wrapper -------------------------------------------------------------
mkdir -p "$STAGE/bin"
cat > "$STAGE/bin/perf_analyzer" <<'EOF'
#!/bin/sh
# Generated by benchmarks/tools/install_perf_analyzer.sh: runs the
# manylinux_2_38 perf_analyzer through Debian trixie's glibc loader and
# libraries kept in ../root (the host's glibc 2.36 is too old for it).
self=$(readlink -f "$0")
home=$(dirname "$(dirname "$self")")
lib="$home/root/usr/lib/x86_64-linux-gnu"
GCONV_PATH="$lib/gconv"; export GCONV_PATH
exec "$lib/ld-linux-x86-64.so.2" --inhibit-cache --library-path "$lib" \
  --argv0 perf_analyzer "$home/wheel/perf_analyzer/bin/perf_analyzer" "$@"
EOF
chmod +x "$STAGE/bin/perf_analyzer"
echo "$STAMP" > "$STAGE/.stamp"

# ---- 4. verify, then swap into place ----------------------------------------
msg=$(verify "$STAGE") || die "verification failed: $msg"
rm -rf "$PA_HOME"
mv "$STAGE" "$PA_HOME"
trap - EXIT
log "installed: $PA_HOME/bin/perf_analyzer ($("$PA_HOME/bin/perf_analyzer" --version 2>&1))"
sed 's/^/install_perf_analyzer:   /' "$PA_HOME/MANIFEST" >&2
