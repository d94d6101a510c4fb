#!/usr/bin/env bash
# The tests: set up, build the L1 images (cached), run the unit and VM tests.
# Extra arguments go to pytest (e.g. -k intel-iommu, or tests/unit only).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/setup.sh
step "L1 images (cache: ${VFIO_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-harness})"
vfio-harness images build
step "debug L1 kernel (the dmabuf kernel with lockdep, hung-task detection, KFENCE; from dmabuf's object tree)"
vfio-harness images build --kernel debug
step "arm64 L1 images (--arch aarch64: cross-built kernels, a rootfs configured by qemu-user)"
vfio-harness images build --arch aarch64
mkdir -p results
# Test files run side by side on ${VFIO_HARNESS_TEST_WORKERS:-2} workers (pytest-xdist, one
# file per worker at a time: a file's tests share its L1s); the L1s of a VM test mostly wait
# (SSH, QMP, qtest round trips), as the matrix's do. Files are handed out in the order
# tests/conftest.py collects them, the longest first (--no-loadscope-reorder: xdist's own
# order, by number of tests, left the longest to the end). Tests marked `alone` would be disturbed
# by the runs beside them (every L1 boot sweeps /dev/shm) and run after, by themselves.
workers=${VFIO_HARNESS_TEST_WORKERS:-2}
# A -m EXPR of the caller's narrows both phases: "(EXPR) and not alone", "(EXPR) and alone".
args=() mark=""
while [ $# -gt 0 ]; do
  case "$1" in
    -m) mark="($2) and "; shift 2 ;;
    -m*) mark="(${1#-m}) and "; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
[ ${#args[@]} -gt 0 ] || args=(tests)
step "tests: unit and VM, ${workers} files at a time; artifacts in results/"
# 5 is pytest's "no test selected": fine for one phase, not for both.
# --durations: the slowest tests, as CI measured them, at the end of the log.
python -m pytest -v -ra --durations=25 -n "$workers" --dist loadfile --no-loadscope-reorder -m "${mark}not alone" \
    --junitxml=results/junit.xml --artifacts results/vm-artifacts "${args[@]}" && first=0 || first=$?
step "tests that must not have other runs beside them, alone"
python -m pytest -v -ra -m "${mark}alone" --junitxml=results/junit-alone.xml \
    --artifacts results/vm-artifacts-alone "${args[@]}" && second=0 || second=$?
if [ "$first" = 5 ] && [ "$second" = 5 ]; then exit 5; fi
for s in "$first" "$second"; do
  if [ "$s" != 0 ] && [ "$s" != 5 ]; then exit "$s"; fi
done
