#!/usr/bin/env bash
# The verdict matrix under avocado: avocado's own job results (results.json,
# xunit, HTML when avocado-framework-plugin-result-html is installed).
# Extra arguments go to `vfio-harness matrix` (e.g. --viommu intel-iommu).
set -euo pipefail
cd "$(dirname "$0")/.."
export VFIO_HARNESS_EXTRAS=test,avocado  # avocado is an extra: the CLI and pytest need none of it
source ci/setup.sh
step "L1 images"
vfio-harness images build
mkdir -p results/avocado
step "avocado variants from harness/checks/matrix.py"
vfio-harness matrix --avocado-variants results/avocado/variants.json \
  --results "$PWD/results/avocado/cells" "$@"
step "avocado run (one L1 per vIOMMU and kernel, shared between the tests)"
exec avocado run --max-parallel-tasks 1 --job-results-dir "$PWD/results/avocado/jobs" \
  --json-variants-load results/avocado/variants.json tests/avocado/matrix.py
