"""The L0 command line, built from a description without launching anything."""

import socket
from pathlib import Path

import pytest

from harness.base.errors import BadInput
from harness.l0.machine import L1Spec, RunFiles, build_command, check_port, free_port
from harness.platforms import AARCH64, VIOMMUS, X86_64

QEMU = Path("/usr/bin/qemu-system-x86_64")


def _cmd(vi="intel-iommu", accel="tcg", port=2222, tmp=Path("/tmp/run"), more=None):
    spec = L1Spec(X86_64.viommu(vi), Path("/k/bzImage"), Path("/r/rootfs.qcow2"))
    files = RunFiles(tmp, Path("/dev/shm/x.ivshmem"))
    return build_command(QEMU, spec, files, {22: port, **(more or {})}, accel), files


def _arg(cmd, flag):
    """Every value given to `flag`."""
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == flag]


def test_intel_iommu_device_and_kernel_argument():
    cmd, _ = _cmd("intel-iommu")
    assert "intel-iommu,intremap=on,aw-bits=48" in _arg(cmd, "-device")
    assert "intel_iommu=on" in _arg(cmd, "-append")[0].split()


def test_virtio_iommu_allows_unsafe_interrupts_for_iommufd_and_type1():
    cmd, _ = _cmd("virtio-iommu")
    append = _arg(cmd, "-append")[0].split()
    assert "virtio-iommu-pci" in _arg(cmd, "-device")
    assert "iommufd.allow_unsafe_interrupts=1" in append
    assert "vfio_iommu_type1.allow_unsafe_interrupts=1" in append
    assert "intel_iommu=on" not in append


def test_every_viommu_gives_exactly_one_iommu_device():
    for name, vi in VIOMMUS.items():
        cmd, _ = _cmd(name)
        iommu_devices = [d for d in _arg(cmd, "-device") if d.split(",")[0] in
                         {d for v in VIOMMUS.values() for d in v.drivers}]
        assert iommu_devices == [vi.device], name


def test_accelerator():
    assert _arg(_cmd(accel="tcg")[0], "-accel") == ["tcg,thread=multi"]
    assert _arg(_cmd(accel="kvm")[0], "-accel") == ["kvm"]


def test_network_is_restricted_and_forwards_ssh_on_loopback_only():
    cmd, _ = _cmd(port=40123)
    assert _arg(cmd, "-netdev") == ["user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:40123-:22"]


def test_more_forwards_for_l2_sockets():
    cmd, _ = _cmd(port=40123, more={4444: 40124, 4445: 40125})
    assert _arg(cmd, "-netdev") == ["user,id=n0,restrict=on"
                                    ",hostfwd=tcp:127.0.0.1:40123-:22"
                                    ",hostfwd=tcp:127.0.0.1:40124-:4444"
                                    ",hostfwd=tcp:127.0.0.1:40125-:4445"]


def test_passthrough_devices():
    cmd, files = _cmd()
    devices = _arg(cmd, "-device")
    assert "edu,dma_mask=0xffffffffffffffff" in devices
    assert "ivshmem-plain,memdev=ivmem" in devices
    (backend,) = _arg(cmd, "-object")
    assert f"mem-path={files.ivshmem}" in backend and "share=on" in backend


def test_boots_the_overlay_not_the_base_image():
    cmd, files = _cmd()
    (drive,) = _arg(cmd, "-drive")
    assert drive.startswith(f"file={files.overlay},")
    assert "/r/rootfs.qcow2" not in " ".join(cmd)


def test_console_and_qmp_go_to_the_run_directory():
    cmd, files = _cmd(tmp=Path("/tmp/somewhere"))
    assert _arg(cmd, "-serial") == [f"file:{files.console}"]
    assert _arg(cmd, "-qmp") == [f"unix:{files.qmp_socket},server=on,wait=off"]
    assert str(files.console).startswith("/tmp/somewhere/")


def test_unknown_viommu_names_the_known_ones():
    with pytest.raises(BadInput, match="unknown vIOMMU 'smmuv3'.*intel-iommu"):
        X86_64.viommu("smmuv3")


def test_busy_port_is_bad_input():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BadInput, match=f"port {port} on 127.0.0.1 is busy"):
            check_port(port)


def test_free_port_is_bindable():
    assert check_port(free_port())


def test_ivshmem_files_and_sockets_of_gone_processes_are_swept(tmp_path):
    import os

    from harness.l0.machine import sweep_stale_shm

    gone = _dead_pid()
    stale = tmp_path / f"vfio-harness-{gone}-123.ivshmem"
    stale_sock = tmp_path / f"vfio-harness-{gone}-123.qmp"
    mine = tmp_path / f"vfio-harness-{os.getpid()}-456.ivshmem"
    other = tmp_path / "someone-else.ivshmem"
    for p in (stale, mine, other, stale_sock):
        p.write_bytes(b"")
    assert sweep_stale_shm(tmp_path) == [stale, stale_sock]
    assert mine.exists() and other.exists() and not stale.exists() and not stale_sock.exists()


def test_a_qmp_socket_too_long_for_sun_path_goes_to_dev_shm(tmp_path):
    """A UNIX socket path has 108 bytes (NUL included): a deep results directory (pytest's
    tmp_path, a bisect step's) would make L0 refuse to start."""
    from harness.l0.machine import SHM, RunFiles

    deep = tmp_path / ("d" * 60) / ("e" * 60)
    files = RunFiles.create(deep)
    assert files.qmp_socket.parent == SHM and files.qmp_socket.name.endswith(".qmp")
    assert RunFiles.create(tmp_path / "r").qmp_socket == tmp_path / "r" / "l0-qmp.sock"


def _dead_pid() -> int:
    import subprocess

    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def test_arm64_smmuv3_is_a_machine_property_not_a_device():
    spec = L1Spec(AARCH64.viommu("smmuv3"), Path("/k/Image"), Path("/r/rootfs.qcow2"),
                  platform=AARCH64)
    cmd = build_command(Path("/usr/bin/qemu-system-aarch64"), spec,
                        RunFiles(Path("/tmp/run"), Path("/dev/shm/x.ivshmem")), {22: 2222}, "tcg")
    assert _arg(cmd, "-M") == ["virt,gic-version=3,iommu=smmuv3"]
    assert not {"smmuv3", "virtio-iommu-pci", "intel-iommu"} & {
        d.split(",")[0] for d in _arg(cmd, "-device")}
    assert "console=ttyAMA0" in _arg(cmd, "-append")[0].split()


def test_arm64_virtio_iommu_needs_no_unsafe_interrupts():
    """GICv3's ITS isolates MSIs: the x86 workaround must not leak onto arm64."""
    spec = L1Spec(AARCH64.viommu("virtio-iommu"), Path("/k/Image"), Path("/r/rootfs.qcow2"),
                  platform=AARCH64)
    cmd = build_command(Path("/usr/bin/qemu-system-aarch64"), spec,
                        RunFiles(Path("/tmp/run"), Path("/dev/shm/x.ivshmem")), {22: 2222}, "tcg")
    assert "virtio-iommu-pci" in _arg(cmd, "-device")
    assert "allow_unsafe_interrupts" not in _arg(cmd, "-append")[0]


def test_a_vIOMMU_of_another_platform_is_bad_input():
    with pytest.raises(BadInput, match="unknown vIOMMU 'intel-iommu' on aarch64"):
        AARCH64.viommu("intel-iommu")


def test_x86_l1_skips_the_io_apic_timer_check():
    """A loaded host under TCG can miss its window; with interrupt remapping that panics."""
    cmd, _ = _cmd("intel-iommu")
    assert "no_timer_check" in _arg(cmd, "-append")[0].split()
