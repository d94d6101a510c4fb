"""arm64 with SMMUv3, the platform of QEMU's own passthrough test: the CLI run as a user
runs it (`vfio-harness run --arch aarch64`), on a real arm64 L1 under TCG whose cells
must meet the same expectations as x86_64's. The images are the README's arm64 build
(ci/test.sh builds them); missing images are an error, not a skip."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.checks import matrix

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("viommu", ["smmuv3"])
def test_an_arm64_l1_meets_every_expectation(pytestconfig, tmp_path, viommu):
    cache = pytestconfig.getoption("--cache-dir")
    out = tmp_path / "arm64"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", *(["--cache-dir", cache] if cache else []),
         "run", "--arch", "aarch64", "--viommu", viommu, "--kernel", "dmabuf",
         "--results", str(out), "--keep-artifacts", "--seed", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=2400)
    said = proc.stdout + proc.stderr
    assert proc.returncode == 0, said[-4000:]
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["arch"] == "aarch64"
    cells = results["cells"]
    assert len(cells) == len(matrix.cells((viommu,), kernels=("dmabuf",), arch="aarch64")), \
        said[-4000:]
    assert {c["backend"] for c in cells} == set(matrix.BACKENDS)  # vfio-user's too
    assert all(c["met"] for c in cells), said[-4000:]
    assert all(c["id"].startswith(f"aarch64-{viommu}-") for c in cells)
    # the L1 was an arm64 machine with SMMUv3, its devices behind it
    console = next(out.glob("*/l0-console.log")).read_text(errors="replace")
    assert "arm-smmu-v3" in console and "Machine model: linux,dummy-virt" in console
