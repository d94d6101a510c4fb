"""The pytest front end as a user runs it: a selection is the work, and an interrupt
leaves nothing running. Each test starts pytest itself, on the matrix, in a process of
its own, and reads what that run left."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.l0.machine import SHM
from tests.vm.processes import qemu_processes_using

ROOT = Path(__file__).resolve().parents[2]


def pytest_matrix(pytestconfig: pytest.Config, artifacts: Path, *selection: str
                  ) -> subprocess.Popen:
    """The matrix test of this checkout under `selection`, with this session's images."""
    passed = [a for option in ("--cache-dir", "--qemu")
              if pytestconfig.getoption(option) for a in (option, pytestconfig.getoption(option))]
    return subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *passed,
         "--artifacts", str(artifacts), "--keep-artifacts", *selection,
         "tests/vm/test_matrix.py"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_marker_selection_boots_its_l1s_and_writes_its_cells_only(pytestconfig, tmp_path):
    """-m "intel_iommu and p2p_dma": the intel-iommu L1s, the P2P check, four cells."""
    proc = pytest_matrix(pytestconfig, tmp_path, "-m", "intel_iommu and p2p_dma")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    assert "matrix plan: 4 cell(s) on 2 L1(s) (intel-iommu/dmabuf, intel-iommu/no-dmabuf)" \
        in out, out[-3000:]
    results = json.loads((tmp_path / "matrix" / "results.json").read_text())
    assert sorted(c["id"] for c in results["cells"]) == sorted(
        f"intel-iommu-{b}-{k}-p2p-dma" for b in ("legacy", "iommufd")
        for k in ("dmabuf", "no-dmabuf"))
    run = results["run"]
    assert run["complete"] is True and run["front_end"] == "pytest"
    assert run["selection"]["markexpr"] == "intel_iommu and p2p_dma"
    assert run["selection"]["checks"] == ["p2p-dma"]
    booted = sorted(p.parent.name for p in (tmp_path / "matrix").glob("*/l0-console.log"))
    assert booted == ["intel-iommu-dmabuf", "intel-iommu-no-dmabuf"]
    # each backend's L2 ran the P2P check's steps and no lifecycle step or side L2
    for backend in (tmp_path / "matrix" / "intel-iommu-dmabuf").glob("*/"):
        if (backend / "l2-trace.log").exists():
            assert not (backend / "side").exists(), backend


def test_sigterm_of_pytest_takes_its_qemu_and_files_with_it(pytestconfig, tmp_path,
                                                               orphans):
    """A CI job cancelled (SIGTERM) mid-cell: the L1 is shut down, reaped, and its ivshmem
    file removed, as with the CLI."""
    proc = pytest_matrix(pytestconfig, tmp_path, "-k", "intel-iommu-legacy-dmabuf-reset",
                         "--l1-jobs", "1")  # the L1 in pytest's own process, as in CI's tests
    end = time.monotonic() + 120
    while not qemu_processes_using(tmp_path):
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < end, "the run never started QEMU"
        time.sleep(0.2)
    time.sleep(8)  # into the boot
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-3000:]
    assert qemu_processes_using(tmp_path) == [], out[-3000:]
    assert orphans.qemu_zombies() == []
    assert list(SHM.glob(f"vfio-harness-{proc.pid}-*")) == [], out[-3000:]


def test_a_shell_in_a_cell_has_its_l2_up_and_leaves_nothing(pytestconfig, tmp_path,
                                                             orphans):
    """`shell CELL -- COMMAND`: the cell's L2 runs in L1 with its devices' dma-bufs (edu BAR
    0, ivshmem BAR 2, nvme BAR 0 on a dma-buf kernel), COMMAND's status is the exit status,
    and quitting stops L2 and L1."""
    passed = [a for option in ("--cache-dir", "--qemu")
              if pytestconfig.getoption(option) for a in (option, pytestconfig.getoption(option))]
    out = subprocess.run(
        [sys.executable, "-m", "harness", *passed, "shell", "intel-iommu-iommufd-dmabuf-reset",
         "--results", str(tmp_path), "--",
         "pgrep -a qemu-system; echo dmabufs=$(ls -l /proc/$(pgrep qemu-system)/fd "
         "| grep -c dmabuf); exit 7"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    said = out.stdout + out.stderr
    assert out.returncode == 7, said[-3000:]
    assert "L2 QMP: 127.0.0.1:" in said and "-object iommufd" in said, said[-3000:]
    assert "dmabufs=3" in said, said[-3000:]
    assert qemu_processes_using(tmp_path) == [] and orphans.qemu_zombies() == []
    assert not (tmp_path / "results.json").exists()  # a shell judges nothing
    assert (tmp_path / "intel-iommu-dmabuf" / "l0-console.log").exists()


def test_keep_failed_holds_the_failing_l1_until_enter_and_leaves_nothing(pytestconfig,
                                                                          tmp_path, orphans):
    """`run --keep-failed`: the L1 whose cell failed (a series that breaks whole-BAR
    dma-bufs) stays up after its cells; the printed SSH line reaches it; Enter lets it go
    and the run ends as usual, no QEMU left."""
    passed = [a for option in ("--cache-dir", "--qemu")
              if pytestconfig.getoption(option) for a in (option, pytestconfig.getoption(option))]
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", *passed, "run", "--keep-failed", "300",
         "--kernel-patches", str(ROOT / "tests/data/series/"
                                 "0001-off-by-one-rejects-whole-bar-dmabufs.mbox"),
         "--viommu", "intel-iommu", "--kernel", "dmabuf", "--backend", "legacy",
         "--check", "dmabuf-per-region", "--results", str(tmp_path)],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    said, ssh = [], None
    try:
        end = time.monotonic() + 600
        while ssh is None and time.monotonic() < end:
            line = proc.stderr.readline()
            if not line:
                break
            said.append(line)
            if "] reach it: " in line:
                ssh = line.split("] reach it: ", 1)[1].split()
        assert ssh, "".join(said)[-3000:]
        assert "kept up for 1 cell(s) that did not meet their expectation: " \
               "intel-iommu-legacy-dmabuf-dmabuf-per-region" in "".join(said)
        inside = subprocess.run([a for a in ssh if a != "-t"] + ["cat /proc/cmdline"],
                                capture_output=True, text=True, timeout=60)
        assert inside.returncode == 0 and "harness-init" in inside.stdout, inside.stderr
        assert qemu_processes_using(tmp_path)  # held, not gone
        out, err = proc.communicate("\n", timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, out + err
    assert "let go (Enter was pressed)" in err, err[-3000:]
    assert qemu_processes_using(tmp_path) == [] and orphans.qemu_zombies() == []
