#!/bin/sh
# Runs the loom models of the threads runtime (src/loom_tests.rs): the
# inbox, the worker pool and the shutdown flag under every interleaving loom
# explores with at most two preemptions. The cfg is `guixd_loom`, not
# `loom`, because a plain `--cfg loom` changes crates elsewhere in the
# workspace; the separate target directory keeps this build from
# invalidating the normal one. Extra arguments go to the test binary, e.g.
#   runtime-threads/loom.sh loom_pool
set -eu
cd "$(dirname "$0")/.."
export RUSTFLAGS="${RUSTFLAGS:-} --cfg guixd_loom"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
exec cargo test -p guixd-runtime-threads --release --lib \
    --target-dir target/loom -- loom "$@"
