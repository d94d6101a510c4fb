#!/usr/bin/env bash
# The default matrix N times; every verdict flip with both reasons (ci/soak.py).
set -euo pipefail
cd "$(dirname "$0")/.."
source ci/setup.sh
step "L1 images"
vfio-harness images build
step "soak: the default matrix ${1:-?} times"
exec python ci/soak.py "$@"
