#!/usr/bin/env bash
# The main job: set up, build the L1 images (cached), run the default matrix.
# Extra arguments go to `vfio-harness run` (e.g. --viommu intel-iommu --results DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/setup.sh
step "L1 images (cache: ${VFIO_HARNESS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vfio-harness})"
vfio-harness images build
step "host check"
vfio-harness doctor || true
step "running the default matrix"
exec vfio-harness run "$@"
