#!/usr/bin/env bash
# Install and set up what hostscope's BPF modules need, idempotently:
#   bpfmods/install-deps.sh [VENV_DIR]
#
# - Debian packages: python3-bpfcc (bcc's Python bindings + libbcc with its built-in clang),
#   bpftool (the tests list loaded programs with it), linux-headers-amd64 (Debian's generic
#   kernel headers; see the fallback below), linux-perf (the `perf` tool: the CPU profile's
#   fallback when bcc cannot run, and its tests).
# - Kernel headers fallback: bcc refuses to compile anything without
#   /lib/modules/$(uname -r)/build. Custom kernels (such as the CI VMs' 6.18) ship no headers
#   package and no CONFIG_IKHEADERS, so we point build/ and source/ at Debian's generic
#   headers. hostscope's modules are tracepoint programs whose arguments bcc reads from
#   tracefs format files of the *running* kernel, so the version mismatch does not matter to
#   them (it would to programs that dereference kernel structs, which hostscope avoids).
#   Existing, working build/ directories are never touched.
# - tracefs mounted at /sys/kernel/tracing (not mounted at boot on such VMs).
# - bcc importable from the project's venv: the venv runs a pyenv CPython, not Debian's
#   /usr/bin/python3, so it cannot see /usr/lib/python3/dist-packages. A .pth file adds a
#   directory holding only a `bcc` symlink — not the whole of dist-packages, whose other
#   modules were built for Debian's Python and would shadow the venv's own packages.
#
# Runs unattended (CI=true, no stdin). Not root: prints why and exits 0 without changes; the
# BPF tests then skip with a reason (or fail under CI=true, where they must run).
set -euo pipefail

VENV_DIR=${1:-}
PACKAGES=(python3-bpfcc bpftool linux-headers-amd64 linux-perf)
TRACEFS=/sys/kernel/tracing
SYSTEM_BCC=/usr/lib/python3/dist-packages/bcc

log() { printf '[install-deps] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    log "not root: skipping BPF dependencies (needs apt-get, mount and /lib/modules)."
    log "run as root: sudo $0 ${VENV_DIR:-VENV_DIR}"
    exit 0
fi

start=$(date +%s)

install_packages() {
    local missing=() pkg
    for pkg in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        log "packages already installed: ${PACKAGES[*]}"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    log "installing: ${missing[*]}"
    # An apt list older than the archive makes install fail on a vanished version, and a
    # fresh machine may have no list at all: refresh once, then install.
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

newest_headers_dir() {
    # Highest-versioned /usr/src/linux-headers-*-$1 directory, or nothing.
    find /usr/src -maxdepth 1 -type d -name "linux-headers-*-$1" -printf '%f\n' 2>/dev/null \
        | sort -V | tail -n 1
}

link_headers() {
    local release moddir build_target source_target name
    release=$(uname -r)
    moddir=/lib/modules/$release
    if [ -d "$moddir/build/include" ]; then
        log "kernel headers present: $moddir/build -> $(readlink -f "$moddir/build")"
        return 0
    fi
    build_target=$(newest_headers_dir amd64)
    source_target=$(newest_headers_dir common)
    [ -n "$build_target" ] && [ -n "$source_target" ] \
        || die "no /usr/src/linux-headers-*-{amd64,common} after installing linux-headers-amd64"
    mkdir -p "$moddir"
    for name in build source; do
        # Only replace what is absent or a symlink (ours, possibly left dangling by a header
        # upgrade); a real directory belongs to someone else.
        if [ -e "$moddir/$name" ] && [ ! -L "$moddir/$name" ]; then
            die "$moddir/$name exists and is not a symlink; leaving it alone"
        fi
    done
    ln -sfn "/usr/src/$build_target" "$moddir/build"
    ln -sfn "/usr/src/$source_target" "$moddir/source"
    log "no headers for $release: linked $moddir/build -> /usr/src/$build_target," \
        "source -> /usr/src/$source_target (generic headers; fine for tracepoint programs)"
}

mount_tracefs() {
    if [ -e "$TRACEFS/events" ]; then
        log "tracefs mounted at $TRACEFS"
        return 0
    fi
    mount -t tracefs nodev "$TRACEFS" || die "mount -t tracefs nodev $TRACEFS failed"
    log "mounted tracefs at $TRACEFS"
}

expose_bcc() {
    [ -n "$VENV_DIR" ] || { log "no VENV_DIR given: not exposing bcc to a venv"; return 0; }
    [ -x "$VENV_DIR/bin/python" ] || die "$VENV_DIR/bin/python not found (create the venv first)"
    # .pth lines are resolved against site-packages, so the shim path must be absolute.
    VENV_DIR=$(cd "$VENV_DIR" && pwd -P)
    [ -d "$SYSTEM_BCC" ] || die "$SYSTEM_BCC missing although python3-bpfcc is installed"
    local purelib shim
    purelib=$("$VENV_DIR/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    shim=$VENV_DIR/hostscope-system-bcc
    mkdir -p "$shim"
    ln -sfn "$SYSTEM_BCC" "$shim/bcc"
    printf '%s\n' "$shim" >"$purelib/hostscope-system-bcc.pth"
    "$VENV_DIR/bin/python" -c 'import bcc' \
        || die "bcc still not importable from $VENV_DIR/bin/python"
    log "bcc importable from $VENV_DIR (via $purelib/hostscope-system-bcc.pth)"
}

install_packages
link_headers
mount_tracefs
expose_bcc
log "done in $(( $(date +%s) - start )) s"
