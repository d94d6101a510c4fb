"""L2 on a real L1: failures at start, a device that is not there, run-time traces."""

import time

import pytest

from harness.base.errors import HarnessError
from harness.collect.stack import booted
from harness.evidence.records import Other, RegionSetup, parse_trace
from harness.l2.backends import backend
from harness.l2.pci import PciConfig
from harness.l2.qemu import L1_QMP_PORT, L1_QTEST_PORT, L2Device, L2Qemu, L2Spec
from harness.platforms import X86_64, EduDevice, IvshmemDevice


@pytest.fixture(scope="module")
def l1(qemu, images, accelerator, artifacts):
    with booted(qemu, images, X86_64.viommu("intel-iommu"), "dmabuf", artifacts / "l2-tests",
                accel=accelerator) as stack:
        inventory = stack.vfio.inventory([EduDevice().vendor_device, IvshmemDevice().vendor_device])
        stack.vfio.bind([d.bdf for d in inventory.devices])
        yield stack, inventory


def l2(stack, spec, out):
    m = stack.machine
    return L2Qemu(stack.session, spec, out, m.host_ports[L1_QMP_PORT],
                  m.host_ports[L1_QTEST_PORT], watch=stack.vfio, start_timeout=20)


def no_qemu_in(stack) -> bool:
    return not stack.session.run("pgrep -f qemu-system", check=False).stdout.strip()


def test_l2_that_dies_at_start_is_an_error_with_its_stderr(l1, tmp_path):
    stack, inventory = l1
    edu = inventory.find(EduDevice().vendor_device).bdf
    spec = L2Spec(backend("iommufd"), (L2Device(edu, "x-no-such-property=on"),))
    with pytest.raises(HarnessError) as e:
        with l2(stack, spec, tmp_path):
            pass
    assert e.value.stage == "L2 start"
    assert "exited before QMP answered" in e.value.message
    assert "x-no-such-property" in e.value.details  # L2's own stderr
    assert "x-no-such-property" in (tmp_path / "l2-stderr.log").read_text()
    assert no_qemu_in(stack)


def test_a_device_that_is_not_there(l1):
    _, inventory = l1
    with pytest.raises(HarnessError, match="no PCI device dead:beef in L1"):
        inventory.find("dead:beef")


def test_trace_events_switched_on_at_run_time(l1, tmp_path):
    stack, inventory = l1
    edu = inventory.find(EduDevice().vendor_device).bdf
    with l2(stack, L2Spec(backend("legacy"), (L2Device(edu),)), tmp_path) as q:
        pci = PciConfig(q.qtest, q.spec.platform.l2)
        q.set_trace("pci_update_mappings*", True)
        slot = pci.find(EduDevice().vendor_device)
        address = pci.assign(slot, pci.bars(slot)[0])
        pci.enable(slot, master=False)
    records = parse_trace((tmp_path / "l2-trace.log").read_text())
    realize_end = max(i for i, r in enumerate(records) if isinstance(r, RegionSetup))
    switched = [i for i, r in enumerate(records)
                if isinstance(r, Other) and r.event.startswith("pci_update_mappings")]
    assert switched, "no pci_update_mappings events after trace-event-set-state"
    assert min(switched) > realize_end  # off at start, on only after the QMP command
    assert any(f"0x{address:x}" in records[i].text for i in switched)
    assert no_qemu_in(stack)


def test_a_qemu_build_brought_by_the_user_is_the_one_under_test(l1, tmp_path):
    """--l2-qemu: a local binary is uploaded into L1 and L2 runs from it."""
    from harness.l2.bundle import UPLOADED
    from harness.run.runner import qemu_under_test

    stack, inventory = l1
    local = tmp_path / "qemu-system-x86_64"
    stack.session.get("/usr/bin/qemu-system-x86_64", local)  # a real build, as a user's would be
    assert qemu_under_test(stack, local).path == UPLOADED
    edu = inventory.find(EduDevice().vendor_device).bdf
    spec = L2Spec(backend("iommufd"), (L2Device(edu),), qemu=UPLOADED)
    with l2(stack, spec, tmp_path / "l2") as q:
        exe = stack.session.run(f"readlink /proc/{q.pid}/exe").stdout.strip()
        assert exe == UPLOADED
        assert q.qmp.cmd("query-version")["qemu"]["major"] >= 10


def test_a_qemu_under_test_that_does_not_run_in_l1_is_an_error(l1, tmp_path):
    from harness.base.errors import BadInput
    from harness.run.runner import qemu_under_test

    stack, _ = l1
    bogus = tmp_path / "qemu-system-x86_64"
    bogus.write_text("#!/bin/sh\nexit 1\n")
    with pytest.raises(BadInput, match="does not run in L1"):
        qemu_under_test(stack, bogus)


@pytest.fixture
def built_elsewhere(l1, tmp_path):
    """A QEMU build directory L1's loader alone cannot run: the packaged binary made to need
    a library by another name (patchelf), with that library in the build's lib/, its
    qtest accelerator module beside it and its firmware in pc-bios/."""
    import subprocess
    import tarfile

    stack, _ = l1
    build = tmp_path / "build"
    (build / "lib").mkdir(parents=True)
    s = stack.session
    s.get("/usr/bin/qemu-system-x86_64", build / "qemu-system-x86_64")
    s.get(s.run("readlink -f /lib/x86_64-linux-gnu/libslirp.so.0").stdout.strip(),
          build / "lib" / "libslirp-harness.so.0")
    s.get("/usr/lib/x86_64-linux-gnu/qemu/accel-qtest.so", build / "accel-qtest.so")
    # A build's pc-bios/ holds what Debian splits between qemu and seabios.
    s.run("tar -chzf /run/pc-bios.tgz -C /usr/share/qemu . -C /usr/share/seabios .")
    s.get("/run/pc-bios.tgz", tmp_path / "pc-bios.tgz")
    with tarfile.open(tmp_path / "pc-bios.tgz") as tar:
        tar.extractall(build / "pc-bios", filter="data")
    for args in (["--replace-needed", "libslirp.so.0", "libslirp-harness.so.0",
                  "qemu-system-x86_64"],
                 ["--set-soname", "libslirp-harness.so.0", "lib/libslirp-harness.so.0"]):
        subprocess.run(["patchelf", *args], cwd=build, check=True, timeout=60)
    return build


def test_a_build_directory_runs_with_what_it_carries(l1, built_elsewhere, tmp_path):
    from harness.l2.bundle import BUNDLE, UPLOADED
    from harness.run.runner import qemu_under_test

    stack, inventory = l1
    stack.session.put(built_elsewhere / "qemu-system-x86_64", "/run/plain-qemu", mode=0o755)
    alone = stack.session.run("ldd /run/plain-qemu", check=False).stdout
    assert "libslirp-harness.so.0 => not found" in alone  # without what it carries, no run
    found = qemu_under_test(stack, built_elsewhere)
    assert found.path == f"{BUNDLE}/qemu-system-x86_64" and found.has_dmabuf_event
    edu = inventory.find(EduDevice().vendor_device).bdf
    spec = L2Spec(backend("legacy"), (L2Device(edu),), qemu=UPLOADED)
    with l2(stack, spec, tmp_path / "l2") as q:
        maps = stack.session.run(f"cat /proc/{q.pid}/maps").stdout
        cmdline = stack.session.run(f"tr '\\0' ' ' < /proc/{q.pid}/cmdline").stdout
    assert f"{BUNDLE}/lib/libslirp-harness.so.0" in maps
    assert f"{BUNDLE}/modules/accel-qtest.so" in maps
    assert f"-L {BUNDLE}/data" in cmdline


# -- the QEMU under test, known before any cell -------------------------------------------

#: Debian trixie's QEMU: no dma-buf code, and a modular build whose qtest accelerator
#: module no trixie package ships.
TRIXIE_QEMU = ("qemu-system-x86", "1:10.0.13+ds-0+deb13u1",
               "5e841d0723a657fd8bc2e9e1a085d24f47fcb3e4a0f94762e6c38b429f22fbb1")


@pytest.fixture(scope="session")
def trixie_qemu(store, tmp_path_factory):
    import subprocess

    from harness.images.debian import PrivateApt

    cache = store.cache / "downloads" / "trixie"
    apt = PrivateApt(cache / "apt", store.recipe.mirror, "trixie")
    deb = apt.download(*TRIXIE_QEMU, cache)
    root = tmp_path_factory.mktemp("trixie-qemu")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True, timeout=120)
    return root / "usr/bin/qemu-system-x86_64"


def test_the_packaged_qemu_is_known_before_any_cell(l1):
    import dataclasses

    from harness.l2.capabilities import BuiltBinary, probe

    stack, _ = l1
    q = probe(stack.session, "qemu-system-x86_64", "packaged")
    assert q.path == "/usr/bin/qemu-system-x86_64"
    assert q.version.startswith("QEMU emulator version 11.")
    assert q.has_iommufd_object and q.has_dmabuf_event
    assert {"host", "iommufd", "x-no-mmap"} <= set(q.vfio_pci_properties)
    assert len(q.sha256) == 64
    # The image's record of the binary is the file L1 runs: the sha256 L1 computed, and
    # the size and mtime L1 sees (a record whose sha256 is made up is taken as is: the
    # shortcut is taken only because L1's stat agrees with the build's).
    built = BuiltBinary.from_record(stack.packaged_qemu)
    assert built is not None and built.sha256 == q.sha256 and built.path == q.path
    made_up = dataclasses.replace(built, sha256="0" * 64)
    assert probe(stack.session, "qemu-system-x86_64", "packaged", built=made_up).sha256 == \
        "0" * 64
    assert probe(stack.session, "qemu-system-x86_64", "packaged", built=built) == q


def test_a_qemu_without_qtest_is_one_clear_error_naming_the_missing_module(l1, trixie_qemu):
    from harness.base.errors import BadInput
    from harness.run.runner import qemu_under_test

    stack, _ = l1
    with pytest.raises(BadInput) as e:
        qemu_under_test(stack, trixie_qemu)
    assert "QEMU emulator version 10.0.13" in e.value.message
    assert "does not start with the qtest accelerator" in e.value.message
    assert "modular build" in e.value.message and "accel-qtest" in e.value.message


def test_run_with_a_qemu_that_cannot_run_the_scenarios_stops_before_any_cell(trixie_qemu,
                                                                              tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "harness", "run", "--viommu", "intel-iommu",
                           "--kernel", "dmabuf", "--results", str(tmp_path),
                           "--l2-qemu", str(trixie_qemu)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()
    assert any(line.startswith("vfio-harness: error: QEMU under test: the QEMU under test "
                               "(QEMU emulator version 10.0.13") for line in last), proc.stderr
    assert "Traceback" not in proc.stderr
    import json
    assert json.loads((tmp_path / "results.json").read_text())["cells"] == []


def test_a_stale_l2_is_named_and_never_talked_to(l1, tmp_path):
    """An L2 left running (here: started by hand on the L2 ports) stops the next one."""
    stack, inventory = l1
    stale = stack.session.run(
        "setsid qemu-system-x86_64 -M none -accel qtest -display none -nodefaults "
        "-qmp tcp:0.0.0.0:4444,server=on,wait=off </dev/null >/dev/null 2>&1 & echo $!")
    try:
        edu = inventory.find(EduDevice().vendor_device).bdf
        deadline = time.monotonic() + 20
        while not stack.session.run("ss -Hltn 'sport = :4444'").stdout.strip():
            assert time.monotonic() < deadline, "the stale process never listened"
            time.sleep(0.2)
        with pytest.raises(HarnessError) as e:
            l2(stack, L2Spec(backend("legacy"), (L2Device(edu),)), tmp_path).start()
        assert "a stale process still listens on L2's ports" in e.value.message
        assert f"pid={stale.stdout.strip()}" in e.value.details
    finally:
        stack.session.run(f"kill {stale.stdout.strip()}", check=False)
