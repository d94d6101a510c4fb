"""The L1 kernel's own word, for real: adversarial kernel series whose bugs only the kernel
itself reports (the fds close, the bytes arrive), caught by `ab` in the kernel's words and
bisected to their patch; and the debug kernel variant, which must meet every expectation
of the dmabuf kernel with its own checks on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.checks import matrix, registry
from tests.vm.conftest import DEBUG_BASELINE, PINNED_BASELINE

SERIES = Path(__file__).parent.parent / "data" / "series"


def harness(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=timeout)


def ab(series: str, out: Path, baseline: Path, *more: str,
       pinned: tuple[str, ...] = PINNED_BASELINE) -> subprocess.CompletedProcess:
    """The series against the session's one run of the pinned kernel (its seed too)."""
    return harness("ab", "--candidate-kernel-patches", str(SERIES / series), *more,
                   *pinned[:4], "--results", str(out), "--baseline-results", str(baseline))


def bisect_one_cell(series: str, backend: str, check: str, out: Path
                    ) -> subprocess.CompletedProcess:
    """`ab --bisect` of a three-patch series on the one cell it breaks (the dmabuf kernel,
    intel-iommu, seed 12): it must be a regression."""
    p = harness("ab", "--bisect", "--candidate-kernel-patches", str(SERIES / series),
                "--viommu", "intel-iommu", "--kernel", "dmabuf", "--backend", backend,
                "--check", check, "--results", str(out), "--seed", "12")
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    return p


def test_a_double_put_that_breaks_nothing_else_is_a_new_failure_in_the_kernels_words(
        tmp_path, pinned_baseline):
    """The series puts a dma-buf's kref when it is detached from its closed device and again
    when it is released: every check of the feature still passes on its own evidence. The
    order that trips it is a dma-buf released after its device was closed: the unplugged
    ivshmem's, which QEMU 11.1.3 keeps open until L2 exits; there the kernel says
    "refcount_t: underflow". L2 exits in the quit-while-revoked step, so that cell is the one
    that stood on it; it warns once per boot (refcount's WARN_ONCE; the taint stays set), so
    the legacy backend's (it runs first) is the new failure, and every other cell is as
    before."""
    p = ab("0001-double-put-of-a-dmabuf-kref.mbox", tmp_path, pinned_baseline)
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    assert "+ intel-iommu-legacy-dmabuf-quit-while-revoked: " in p.stdout
    assert ("candidate: the L1 kernel complained during quit-while-revoked: WARNING: refcount "
            "bug in vfio_pci_dma_buf_release: refcount_t: underflow; use-after-free. (WARNING: "
            "lib/refcount.c:28 at ") in p.stdout
    assert "call trace: vfio_pci_dma_buf_release < dma_buf_release" in p.stdout
    record = json.loads((tmp_path / "compare.json").read_text())
    assert record["counts"]["new failure"] == 1, record["counts"]
    cells = {c["id"]: c for c in json.loads(
        (tmp_path / "candidate" / "results.json").read_text())["cells"]}
    cell = cells["intel-iommu-legacy-dmabuf-quit-while-revoked"]
    assert "kernel-splat" in cell["findings"]
    report = cell["evidence"]["kernel_reports"][0]
    assert report["kind"] == "refcount" and report["step"] == "quit-while-revoked"
    assert report["title"] == "WARNING: refcount bug in vfio_pci_dma_buf_release"
    assert report["guilty"] == "vfio_pci_dma_buf_release"
    assert "+ kernel report: WARNING: refcount bug in vfio_pci_dma_buf_release" in p.stdout
    assert "W" in report["new_taint"]
    assert "kernel-splat" not in cells["intel-iommu-legacy-dmabuf-p2p-dma"]["findings"]
    whole = tmp_path / "candidate" / cell["artifacts"] / "l1-kernel-reports.txt"
    assert "---[ end trace" in whole.read_text()  # the whole report is kept
    # the baseline's kernel said nothing in any cell
    base = json.loads((pinned_baseline / "results.json").read_text())
    assert all("kernel-splat" not in c["findings"] for c in base["cells"])
    assert all(c["grounds"][-1] == "L1 kernel log and taint around each step: no report"
               for c in base["cells"] if c["outcome"] in ("pass", "xfail"))


def test_a_dmabuf_leaked_on_a_refused_map_is_what_its_l2_left_behind(tmp_path, pinned_baseline):
    """The series drops the dma-buf put on IOMMU_IOAS_MAP_FILE's error path: every refused
    map of a dma-buf leaks it, with no report and no answer anyone would not get anyway.
    Refused maps are common: iommufd refuses the side L2's nvme BAR 0 dma-buf of two ranges
    (EOPNOTSUPP, the multi-range cell's expected failure), and the L1 kernel refuses to map
    a revoked dma-buf, which the harness's revoke-state probe asks of every dma-buf while
    its device does not decode (the decode witness of every L2). So every L2 on that kernel
    leaves dma-bufs behind, and every cell that judges an ended L2 fails on them: the
    teardown checks' own (quit-while-revoked, kill-while-mapped) and, through what the side
    L2 left, both side checks, the expected failure included. The cells that judge a
    running L2 are as before."""
    p = ab("0001-refused-map-file-leaks-its-dmabuf.mbox", tmp_path, pinned_baseline)
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    judged_ended = {f"intel-iommu-{b}-dmabuf-{c}" for b in registry.KERNEL
                    for c in ("multi-range", "dmabuf-per-region", "quit-while-revoked")}
    judged_ended.add("intel-iommu-iommufd-dmabuf-kill-while-mapped")
    record = json.loads((tmp_path / "compare.json").read_text())
    cells = {c["id"]: c for c in json.loads(
        (tmp_path / "candidate" / "results.json").read_text())["cells"]}
    assert {i for i, c in cells.items() if not c["met"]} == judged_ended, p.stdout
    assert record["counts"]["new failure"] == len(judged_ended), record["counts"]
    for cell_id in judged_ended:
        cell = cells[cell_id]
        assert f"+ {cell_id}: " in p.stdout
        assert cell["outcome"] == "fail" and "left-behind" in cell["findings"], cell
        assert "dma-buf(s) of L2's exporter still alive in the L1 kernel (debugfs bufinfo: " \
               "vfio_pci_core inode " in cell["reason"], cell["reason"]
        assert "kernel-splat" not in cell["findings"]  # the kernel itself said nothing
    for backend in registry.KERNEL:
        side = cells[f"intel-iommu-{backend}-dmabuf-multi-range"]["reason"]
        assert side.startswith("once its L2 had ended (side_l2, waited "), side
    refused = cells["intel-iommu-iommufd-dmabuf-multi-range"]["reason"]
    assert "not the expected failure: once the cell's L2 had ended" in refused, refused
    base = json.loads((pinned_baseline / "results.json").read_text())
    assert all(c["met"] and "left-behind" not in c["findings"] for c in base["cells"])


#: A QEMU under test that, as L2 starts (a step every cell stands on), writes into L1's
#: kernel log from userspace a line in the very form of a kernel WARN, then runs the real one.
USERSPACE_WARNING = """#!/bin/sh
case " $* " in *" -qtest "*)
  echo "<4>WARNING: CPU: 0 PID: 1 at drivers/vfio/pci/vfio_pci_dmabuf.c:1 \
vfio_pci_dma_buf_move+0x0/0x10 (written by vfio-harness's test from userspace)" > /dev/kmsg ;;
esac
exec /usr/bin/qemu-system-x86_64 "$@"
"""


@pytest.mark.usefixtures("images")
def test_a_warning_userspace_writes_into_the_kernel_log_fails_no_cell(tmp_path):
    """Only the kernel's own records are reports: a line a program writes into /dev/kmsg
    carries the user facility, whatever it says. The line must be there (in the artifact,
    marked as userspace's, in the window of the step it came in) and every cell must
    still meet its expectation, with no complaint outside the cells either."""
    wrapper = tmp_path / "qemu-writes-a-warning"
    wrapper.write_text(USERSPACE_WARNING)
    wrapper.chmod(0o755)
    p = harness("run", "--viommu", "intel-iommu", "--kernel", "dmabuf", "--backend",
                "iommufd", "--l2-qemu", str(wrapper), "--keep-artifacts", "--results",
                str(tmp_path / "out"),
                "--seed", "12")
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    cells = record["cells"]
    assert cells and all(c["met"] and "kernel-splat" not in c["findings"] for c in cells)
    assert not record["run"].get("kernel_outside_cells")
    log = (tmp_path / "out" / cells[0]["artifacts"] / "l1-kernel-reports.txt").read_text()
    assert log.startswith("# reports: none")
    step = log.split("# L1 kernel log during l2_start", 1)[1].split("\n# ", 1)[0]
    assert "(userspace, facility 1) WARNING: CPU: 0 PID: 1 at drivers/vfio/pci/" in step


@pytest.mark.usefixtures("images")
def test_bisect_names_the_patch_that_brought_the_kernels_complaint(tmp_path):
    """Three patches, the second the double put: the bisect names it (the unplug is the
    check that releases a dma-buf after its device closed)."""
    p = bisect_one_cell("bisect-double-put-3.mbox", "legacy", "dmabuf-unplug", tmp_path)
    assert ('first bad patch 2/3 "vfio/pci: drop a dma-buf\'s mapping reference when it is '
            'detached and when it is released"') in p.stdout, p.stdout
    assert "--kernel-patches-first 2" in p.stdout


def test_a_device_closed_with_its_dmabufs_revoked_hangs_and_is_named_in_the_kernels_words(
        tmp_path, pinned_baseline):
    """The series drains a closing device's dma-bufs in cleanup itself again, as the
    upstream code did before its fix: a dma-buf already revoked gets its registered
    reference put a second time (refcount_t underflow) and cleanup then waits for a
    completion nobody signals. Only a device closed while its dma-bufs are revoked goes
    there: unplug-while-revoked on both backends. Each fails on the kernel's WARNING and on
    the hang, with the stuck task's stack; each hang takes its L1, and the cells left run on
    a fresh one. (dmabuf-unplug may meet it too: whether QEMU's reset turns decode off
    before it closes the unplugged device varies from run to run.)"""
    p = ab("0001-cleanup-drains-a-revoked-dmabuf-again.mbox", tmp_path, pinned_baseline)
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    record = json.loads((tmp_path / "compare.json").read_text())
    cells = {c["id"]: c for c in json.loads(
        (tmp_path / "candidate" / "results.json").read_text())["cells"]}
    assert len(cells) == len(matrix.cells(("intel-iommu",), kernels=("dmabuf",)))  # none lost
    new = {c["id"] for c in cells.values() if not c["met"]}
    for backend in registry.KERNEL:
        cell = cells[f"intel-iommu-{backend}-dmabuf-unplug-while-revoked"]
        assert f"+ {cell['id']}: pass -> fail" in p.stdout
        assert "hung" in cell["findings"] and "kernel-splat" in cell["findings"]
        assert cell["reason"].startswith(
            "the L1 kernel complained during unplug-while-revoked: WARNING: refcount bug in "
            "vfio_pci_dma_buf_cleanup: refcount_t: underflow; use-after-free."), cell["reason"]
        # The close is waited for until its release returns; in the moment between the fd
        # leaving L2's table and the release beginning, the hang shows at the replug instead.
        assert ("did not complete within 20 s" in cell["reason"]
                or "L2 hung in unplug-while-revoked (QMP device_add: no answer" in cell["reason"]
                ), cell["reason"]
        assert "in D (disk sleep): vfio_pci_dma_buf_cleanup < vfio_pci_core_close_device" \
            in cell["reason"]
    assert new <= {f"intel-iommu-{b}-dmabuf-{c}" for b in registry.KERNEL
                   for c in ("unplug-while-revoked", "dmabuf-unplug")}, new
    assert record["counts"]["new failure"] == len(new)
    assert "+ kernel report: WARNING: refcount bug in vfio_pci_dma_buf_cleanup" in p.stdout
    assert "discarded;" in p.stderr + p.stdout and "go to a fresh L1 (#2)" in p.stderr + p.stdout
    assert list((tmp_path / "candidate").glob("intel-iommu-dmabuf.l1-*/*"))  # its artifacts


@pytest.mark.usefixtures("images")
def test_bisect_names_the_patch_that_leaks_a_dmabuf_on_a_refused_map(tmp_path):
    """Three patches, the second the leak between two comments: the bisect names it on the
    cell that asks what its own killed L2 left behind."""
    p = bisect_one_cell("bisect-leak-3.mbox", "iommufd", "kill-while-mapped", tmp_path)
    assert ('first bad patch 2/3 "iommufd: let iopt_alloc_dmabuf_pages() own the dma-buf '
            'reference"') in p.stdout, p.stdout


@pytest.mark.usefixtures("images")
def test_bisect_names_the_patch_that_makes_a_closing_device_hang(tmp_path):
    """Three patches, the second the revoked-cleanup bug between two comments: the bisect
    names it, each step judging only the cell that hung."""
    p = bisect_one_cell("bisect-revoked-cleanup-3.mbox", "legacy", "unplug-while-revoked", tmp_path)
    assert ('first bad patch 2/3 "vfio/pci: drain a closing device\'s dma-bufs in cleanup '
            'itself"') in p.stdout, p.stdout


def test_the_debug_kernel_meets_the_dmabuf_kernels_expectations_with_its_checks_on(
        store, debug_baseline):
    config = (store.load(["debug"]).kernels["debug"].bzimage.parent / "config").read_text()
    for option in ("CONFIG_PROVE_LOCKING=y", "CONFIG_DETECT_HUNG_TASK=y", "CONFIG_KFENCE=y",
                   "CONFIG_DEBUG_OBJECTS=y", "CONFIG_VFIO_PCI_DMABUF=y"):
        assert option in config, option
    record = json.loads((debug_baseline / "results.json").read_text())
    cells = record["cells"]
    assert len(cells) == len(matrix.cells(("intel-iommu",), kernels=("debug",)))
    assert {c["kernel"] for c in cells} == {"debug"}
    assert not record["run"].get("kernel_outside_cells")  # a clean boot and teardown
    assert all(c["met"] for c in cells)


def test_two_locks_taken_in_opposite_orders_are_a_possible_deadlock_on_the_debug_kernel(
        tmp_path, debug_baseline):
    """The series makes iommufd's map of a VFIO dma-buf take the device's memory_lock
    inside the dma-buf's reservation lock, which creation and revoke take the other way
    round. Nothing deadlocks (the paths never run at once here) and every answer is as
    before, so only lockdep can tell: the first IOMMU_IOAS_MAP_FILE of a BAR dma-buf on
    the boot (the decode witness's, a step every cell of the first backend's L2 stands
    on) is "possible circular locking dependency detected", with the two chains. lockdep
    reports once and is off for the rest of the boot, so the other backend's cells are as
    before: they could not have said more. The series is three patches, the lock between
    two comments: the bisect names it. (On the dmabuf kernel the same series meets every
    expectation: measured, not tested here.)"""
    p = ab("bisect-lock-order-3.mbox", tmp_path, debug_baseline, "--bisect",
           pinned=DEBUG_BASELINE)
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    assert ('first bad patch 2/3 "vfio/pci: recheck the revoke state of a dma-buf under the '
            'memory lock"') in p.stdout, p.stdout
    cells = {c["id"]: c for c in json.loads(
        (tmp_path / "candidate" / "results.json").read_text())["cells"]}
    first = matrix.BACKENDS[0]
    new = {i for i, c in cells.items() if not c["met"]}
    assert new == {c.id for c in matrix.cells(("intel-iommu",), (first,), ("debug",))}, new
    record = json.loads((tmp_path / "compare.json").read_text())
    assert record["counts"]["new failure"] == len(new), record["counts"]
    for cell_id in new:
        cell = cells[cell_id]
        assert "kernel-splat" in cell["findings"], cell
        assert cell["reason"].startswith(
            "the L1 kernel complained during decode_witness: possible deadlock in "
            "vfio_pci_dma_buf_iommufd_map: WARNING: possible circular locking dependency "
            "detected; call trace: vfio_pci_dma_buf_iommufd_map < iopt_alloc_dmabuf_pages"
            ), cell["reason"]
    report = cells[f"intel-iommu-{first}-debug-p2p-dma"]["evidence"]["kernel_reports"][0]
    assert report["kind"] == "lockdep" and report["guilty"] == "vfio_pci_dma_buf_iommufd_map"
    chains = "\n".join(report["lines"])
    assert "(&vdev->memory_lock)" in chains and "(reservation_ww_class_mutex)" in chains
    assert "vfio_pci_core_feature_dma_buf" in chains  # the other order: creation
    assert "+ kernel report: possible deadlock in vfio_pci_dma_buf_iommufd_map" in p.stdout


def test_a_dmabuf_freed_twice_after_its_device_closed_is_slubs_report_and_bisected(
        tmp_path, debug_baseline):
    """The series frees a dma-buf's ranges when its device is closed; its release frees
    them again. Only a dma-buf that outlives its device goes there: the unplugged
    ivshmem's, which QEMU 11.1.3 keeps open until L2 exits, so each backend's
    quit-while-revoked is where the debug kernel's SLUB checks say "Object already free",
    naming the release. After that the kernel is not trusted: the checks whose steps come
    later (an L2 of their own, the side L2, L1's own ioctls) are not run but failed naming
    the report (before, a freelist the double free had corrupted failed some of them in one
    run and none in the next), and the other backend runs on a fresh L1. Three patches,
    the free between two comments: the bisect names it for every cell, each step running
    the cell with the unplug its L2 made first."""
    p = ab("bisect-double-free-3.mbox", tmp_path, debug_baseline, "--bisect",
           pinned=DEBUG_BASELINE)
    assert p.returncode == 1, p.stdout + p.stderr[-3000:]
    cells = {c["id"]: c for c in json.loads(
        (tmp_path / "candidate" / "results.json").read_text())["cells"]}
    new = {i for i, c in cells.items() if not c["met"]}
    quits = {f"intel-iommu-{b}-debug-quit-while-revoked" for b in registry.KERNEL}
    later = [c for phase in (registry.ALONE, registry.OWN, registry.SIDE)
             for c in registry.in_phase(phase)]  # the steps after the main L2's end
    unjudged = {f"intel-iommu-{b}-debug-{c.name}" for b in registry.KERNEL for c in later
                if c.only_backend in (None, b)}
    # vfio-user's L2 goes there too: the server's IOAS holds the vfio-pci BAR's dma-buf
    # when L2 closes the device, and releases it after. SLUB tells only if nothing took
    # the freed object in between: 1 of 2 runs here. So its cells fail on that report or
    # not at all, and their bisect can land past the patch (a flaky cell's answer).
    served = {c.id for c in matrix.cells(("intel-iommu",), ("vfio-user",), ("debug",))}
    assert new - served == quits | unjudged, new
    for cell_id in new & served:
        assert "SLUB: Object already free in vfio_pci_dma_buf_release" in \
            cells[cell_id]["reason"], cells[cell_id]["reason"]
    for cell_id in quits:
        cell = cells[cell_id]
        assert "kernel-splat" in cell["findings"], cell
        assert "SLUB: Object already free in vfio_pci_dma_buf_release: BUG kmalloc-16 " \
               in cell["reason"], cell["reason"]
        report = cell["evidence"]["kernel_reports"][0]
        assert report["kind"] == "slub" and report["guilty"] == "vfio_pci_dma_buf_release"
    for cell_id in unjudged:
        assert cells[cell_id]["reason"].startswith(
            "not run: its kernel reported SLUB: Object already free in vfio_pci_dma_buf_release "
            "during quit-while-revoked, before this check's steps"), cells[cell_id]["reason"]
    for cell_id in new:
        assert f"+ {cell_id}: " in p.stdout
    assert "go to a fresh L1 (#2)" in p.stdout + p.stderr
    record = json.loads((tmp_path / "compare.json").read_text())
    assert record["counts"]["new failure"] == len(new)
    assert {c["verdict"] + " " + str(c["first_bad"]) for i, c in record["bisect"]["cells"].items()
            if i not in served} == {"first bad patch 2"}, record["bisect"]
    assert ('first bad patch 2/3 "vfio/pci: free a closed device\'s dma-buf ranges at '
            'cleanup"') in p.stdout, p.stdout
