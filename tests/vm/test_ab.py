"""A/B for real: the packaged QEMU against a broken one and against a harmless one, both
sides on the same L1 boots (intel-iommu, dmabuf kernel: where dma-buf can break)."""

import json
import subprocess
import sys

import pytest

from harness.checks import matrix
from tests.vm.adversaries import CATALOGUE, build_shim

HARMLESS = '#!/bin/bash\n# the packaged QEMU, unchanged\nexec /usr/bin/qemu-system-x86_64 "$@"\n'


#: One (vIOMMU, kernel)'s cells: every check on each backend it has cells on.
CELLS = len(matrix.cells(("intel-iommu",), kernels=("dmabuf",)))


def ab(candidate, out, *more: str):
    return subprocess.run([sys.executable, "-m", "harness", "ab", "--candidate-l2-qemu",
                           str(candidate), "--viommu", "intel-iommu", "--kernel", "dmabuf",
                           "--results", str(out), *(more or ("--seed", "11"))],
                          capture_output=True, text=True, timeout=600)


def test_ab_names_a_broken_qemus_regressions_with_their_evidence(tmp_path, pinned_baseline):
    """Against the session's one run of the packaged QEMU on the pinned kernel (the A/B of
    a harmless change below runs its own baseline, on the candidate's L1 boots)."""
    refuse = {a.name: a for a in CATALOGUE}["refuse-dmabuf"]
    candidate = tmp_path / "qemu-refuse-dmabuf"
    candidate.write_text(refuse.wrapper(build_shim(tmp_path)))
    p = ab(candidate, tmp_path / "ab", "--baseline-results", str(pinned_baseline))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "+ intel-iommu-iommufd-dmabuf-p2p-dma: pass -> fail" in p.stdout
    assert "- vfio_region_dmabuf 0000:00:03.0 BAR 2 vanished" in p.stdout
    assert "REGRESSION" in p.stdout
    counts = json.loads((tmp_path / "ab" / "compare.json").read_text())["counts"]
    # every cell of the dmabuf kernel the adversary names breaks; the others (legacy P2P,
    # which maps BAR 2 by address, the check that drives iommufd with no QEMU, the legacy
    # cell of the kill, a skip, and the served edu's regions and its dma-buf-less skip) do
    # not. Among those it breaks, a relation: vfio-user's P2P into the vfio-pci BAR, whose
    # dma-buf QEMU no longer has to hand the server
    named = sum(1 for c in matrix.cells(("intel-iommu",), kernels=("dmabuf",))
                if refuse.expected("dmabuf", c.backend, c.check))
    assert named == CELLS - 6
    assert "+ intel-iommu-vfio-user-dmabuf-vfio-user-p2p: pass -> fail" in p.stdout
    assert counts["new failure"] == named and counts["unchanged"] == CELLS - named, counts
    page = (tmp_path / "ab" / "candidate" / "report.html").read_text()
    assert "<section id='ab'>" in page


@pytest.mark.usefixtures("images")
def test_ab_of_a_harmless_change_reports_no_change(tmp_path):
    candidate = tmp_path / "qemu-same"
    candidate.write_text(HARMLESS)
    p = ab(candidate, tmp_path / "ab")
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"{CELLS} cells: {CELLS} unchanged" in p.stdout and "no regression" in p.stdout
