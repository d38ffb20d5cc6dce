#!/usr/bin/env bash
#! Builds (once) and mounts the Guix 1.5.0 root: a Debian sid tree holding the
#! real Guix client, its Scheme modules and the C++ guix-daemon, used by the
#! golden-vector script, the interop and differential tests and the benchmarks.
#!
#! Keeps true: the root lives outside any checkout (GUIXD_GUIX_ROOT, default
#! /var/cache/guixd/guix-root), is built at most once per machine, and is a
#! mount point with /proc, /dev and /sys bound inside it when this exits 0.
#! The Debian mirror is read from the machine's own apt sources; no host name
#! is written here.
set -euo pipefail

root=${GUIXD_GUIX_ROOT:-/var/cache/guixd/guix-root}

mirror() {
    # The first deb URI of the machine's main (non-security) archive.
    local uri
    uri=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
    if [ -z "$uri" ]; then
        uri=$(grep -hE '^\s*deb\s' /etc/apt/sources.list 2>/dev/null \
            | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
    fi
    [ -n "$uri" ] || { echo "guix-root: no Debian mirror in apt sources" >&2; exit 1; }
    echo "$uri"
}

build() {
    command -v mmdebstrap >/dev/null || apt-get install -y mmdebstrap >&2
    local tmp="$root.partial"
    rm -rf "$tmp"
    mkdir -p "$(dirname "$root")"
    mmdebstrap --variant=apt \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --include=guix,busybox-static,procps \
        sid "$tmp" "$(mirror)" >&2
    mv "$tmp" "$root"
}

mount_root() {
    if ! mountpoint -q "$root"; then
        mount --bind "$root" "$root"
    fi
    for d in proc dev sys; do
        mkdir -p "$root/$d"
        mountpoint -q "$root/$d" || mount --rbind "/$d" "$root/$d"
    done
}

[ -x "$root/usr/bin/guix-daemon" ] || build
mount_root
echo "$root"
