#!/usr/bin/env bash
# The one command that runs every test of guixd on a machine that has never
# seen the project (README.md names it; .ci/run calls it).
#
# It installs what the tests need from Debian (mmdebstrap, busybox-static),
# builds or reuses the Guix 1.5.0 root (tests/support/guix-root.sh), then
# runs the workspace tests, whose interop and differential scenarios drive
# the real Guix client and the C++ guix-daemon inside that root, on both
# runtimes, and the loom models of the threads runtime. Must run as root (the root is made with mmdebstrap and
# bind mounts; the sandbox tests need namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: must run as root (it builds and mounts the Guix root)" >&2
    exit 1
fi

need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)

if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

GUIXD_GUIX_ROOT=$(tests/support/guix-root.sh)
export GUIXD_GUIX_ROOT

cargo build --workspace --all-targets
cargo test --workspace
# The loom models of the threads runtime's shared state (their own cfg and
# target directory).
runtime-threads/loom.sh
