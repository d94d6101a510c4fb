#!/usr/bin/env bash
# The tests: set up, build the L1 images (cached), run the unit and VM tests.
# Extra arguments go to pytest (e.g. -k intel-iommu, or tests/unit only).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/setup.sh
step "L1 images (cache: ${VFIO_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-harness})"
vfio-harness images build
step "arm64 L1 images (--arch aarch64: cross-built kernels, a rootfs configured in an arm64 L1)"
vfio-harness images build --arch aarch64
mkdir -p results
step "tests: unit, then VM (one L1 boot per vIOMMU and kernel); artifacts in results/"
exec python -m pytest -v -ra --junitxml=results/junit.xml --artifacts results/vm-artifacts "${@:-tests}"
