#!/usr/bin/env bash
#! Regenerates the golden vectors in tests/golden/*.json from the real Guix
#! 1.5.0 client and the real C++ guix-daemon 1.5.0 (see README.md here).
#!
#! Keeps true: runs as root; takes the Guix root from tests/support/guix-root.sh;
#! works in a private mount namespace where a fresh tmpfs is mounted on the
#! root's /gnu/store and /tmp, so the store directory is exactly /gnu/store,
#! nothing outside that namespace sees the scratch store, and every scratch
#! mount disappears with the namespace; the daemon and the proxy it starts are
#! stopped by process id before it exits; the output files depend only on the
#! scripts here and on the Guix/daemon versions (no times, no pids).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

die() { echo "golden: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (chroot, mounts)"

if [ -z "${GOLDEN_IN_NAMESPACE:-}" ]; then
    root=$("$repo/tests/support/guix-root.sh")
    export GOLDEN_ROOT="$root" GOLDEN_IN_NAMESPACE=1
    exec unshare --mount --propagation private -- "$0" "$@"
fi

root=$GOLDEN_ROOT
[ -x "$root/usr/bin/guix-daemon" ] || die "no guix-daemon in $root"
command -v python3 >/dev/null || die "python3 is needed for the recording proxy"

# Everything below runs inside the private mount namespace.
mkdir -p "$root/gnu/store"
mount -t tmpfs -o mode=0755 golden-store "$root/gnu/store"
mount -t tmpfs -o mode=1777 golden-tmp "$root/tmp"

s=/tmp/golden                 # scratch directory, as seen inside the root
hs=$root$s                    # the same directory, as seen from here
mkdir -p "$hs"/{state,log,db,conf,home,trees,scripts,out}
cp "$here"/*.scm "$hs/scripts/"

store_env=(
    NIX_STORE_DIR=/gnu/store
    GUIX_STATE_DIRECTORY=$s/state
    GUIX_LOG_DIRECTORY=$s/log
    GUIX_DATABASE_DIRECTORY=$s/db
    GUIX_CONFIGURATION_DIRECTORY=$s/conf
)
base_env=(
    PATH=/usr/sbin:/usr/bin:/sbin:/bin
    HOME=$s/home
    LC_ALL=C.UTF-8
    COLUMNS=80
    GUILE_AUTO_COMPILE=0
    "${store_env[@]}"
)

daemon_pid=
proxy_pid=
cleanup() {
    # Only the processes started here, by their ids.  The daemon runs in its
    # own session, so its per-connection children share its process group.
    if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; fi
    if [ -n "$daemon_pid" ]; then kill -- "-$daemon_pid" 2>/dev/null || true; fi
    wait 2>/dev/null || true
}
trap cleanup EXIT

wait_for_socket() {
    local i
    for i in $(seq 100); do
        [ -S "$1" ] && return 0
        sleep 0.05
    done
    die "no socket at $1"
}

start_daemon() {
    setsid chroot "$root" env -i "${base_env[@]}" \
        guix-daemon --listen=$s/daemon.sock \
        --substitute-urls="https://substitutes.invalid/a https://substitutes.invalid/b" \
        >>"$hs/daemon.log" 2>&1 &
    daemon_pid=$!
    wait_for_socket "$hs/daemon.sock"
}

stop_daemon() {
    kill -- "-$daemon_pid" 2>/dev/null || true
    wait "$daemon_pid" 2>/dev/null || true
    daemon_pid=
    rm -f "$hs/daemon.sock"
}

fresh_store() {
    # Each script starts from an empty store and database, so its output does
    # not depend on what the other scripts did.
    [ -z "$daemon_pid" ] || stop_daemon
    umount "$root/gnu/store"
    mount -t tmpfs -o mode=0755 golden-store "$root/gnu/store"
    rm -rf "${hs:?}"/{state,log,db,conf,trees}
    mkdir -p "$hs"/{state,log,db,conf,trees}
    start_daemon
}

client() { # SOCKET SCRIPT OUT
    chroot "$root" env -i "${base_env[@]}" GUIX_DAEMON_SOCKET="$1" \
        GOLDEN_SCRATCH=$s GOLDEN_DIRECT_SOCKET=$s/daemon.sock \
        guix repl -- "$s/scripts/$2" "$s/out/$3" \
        </dev/null >>"$hs/client.log" 2>&1 \
        || { cat "$hs/client.log" >&2; die "$2 failed"; }
}

recorded_client() { # SCRIPT OUT WIRE-DIR
    # The client talks to the daemon through the recording proxy.
    mkdir -p "$hs/$3"
    python3 "$here/record.py" proxy --listen "$hs/proxy.sock" \
        --upstream "$hs/daemon.sock" --out "$hs/$3" &
    proxy_pid=$!
    wait_for_socket "$hs/proxy.sock"
    client $s/proxy.sock "$1" "$2"
    kill -TERM "$proxy_pid"
    wait "$proxy_pid" || die "the proxy failed"
    proxy_pid=
}

fresh_store
client $s/daemon.sock encodings.scm encodings.json
fresh_store
client $s/daemon.sock store-paths.scm store-paths.json
fresh_store
client $s/daemon.sock nar.scm nar.json
fresh_store
client $s/daemon.sock derivations.scm derivations.json
fresh_store
recorded_client errors.scm errors.json wire-errors
fresh_store
recorded_client wire.scm wire-plan.json wire
stop_daemon

python3 "$here/record.py" finish --scratch "$hs/out" --wire "$hs/wire" \
    --wire-errors "$hs/wire-errors" --dest "$here"

echo "golden: wrote $(cd "$here" && ls ./*.json | tr '\n' ' ')" >&2
