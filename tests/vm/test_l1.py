"""L1 as device assignment needs it, checked on a real boot per (vIOMMU, kernel).

Everything is asked of the running L1 kernel over SSH: device nodes, sysfs
groups, and VFIO_DEVICE_FEATURE_PROBE for dma-buf - not read from a config file.
"""

import errno
import hashlib
from pathlib import Path

from harness.collect.survey import problems
from harness.platforms import DEFAULT_DEVICES, EduDevice, IvshmemDevice


def test_passed_through_devices_are_there_with_their_bars(l1_survey):
    by_id = {d.vendor_device: d for d in l1_survey.bound}
    assert set(by_id) == {d.vendor_device for d in DEFAULT_DEVICES}
    edu_bars = {b.index: b.size for b in by_id[EduDevice().vendor_device].bars}
    ivshmem_bars = {b.index: b.size for b in by_id[IvshmemDevice().vendor_device].bars}
    assert edu_bars == {0: 1 << 20}
    assert ivshmem_bars == {0: 256, 2: 1 << 20}  # BAR 0 is sub-page: no dma-buf later


def test_iommufd_and_vfio_cdevs_exist(l1, l1_survey):
    assert l1.session.run("test -c /dev/iommu", check=False).ok, "/dev/iommu is missing"
    listed = l1.session.run("ls /dev/vfio/devices").stdout.split()
    assert sorted(listed) == sorted(Path(d.cdev).name for d in l1_survey.bound)
    assert len(listed) == len(DEFAULT_DEVICES)
    for dev in l1_survey.bound:
        assert l1.session.run(f"test -c {dev.cdev}", check=False).ok


def test_each_device_is_alone_in_its_iommu_group(l1_survey):
    for dev in l1_survey.bound:
        assert dev.driver == "vfio-pci"
        assert dev.alone_in_group, f"{dev.bdf} shares group {dev.iommu_group}: {dev.group_members}"
        assert dev.group_dev == f"/dev/vfio/{dev.iommu_group}"
    groups = [d.iommu_group for d in l1_survey.bound]
    assert len(set(groups)) == len(groups)


def test_kernel_answers_the_dmabuf_probe_as_its_variant_says(l1_survey, store):
    has_dmabuf = store.recipe.kernels[l1_survey.kernel].has_dmabuf
    assert set(l1_survey.probes) == {d.bdf for d in l1_survey.bound}
    for bdf, probe in l1_survey.probes.items():
        if has_dmabuf:
            assert probe.supported, f"{bdf}: {probe.error}"
        else:
            assert not probe.supported and probe.errno == errno.ENOTTY, f"{bdf}: {probe}"
    assert problems(l1_survey) == []


def test_restore_then_bind_again(l1, l1_survey):
    bdfs = [d.bdf for d in l1_survey.bound]
    restored = l1.vfio.restore(bdfs)
    assert all(d.driver is None and d.cdev is None for d in restored), restored
    rebound = l1.vfio.bind(bdfs)
    assert all(d.driver == "vfio-pci" and d.cdev for d in rebound), rebound


def test_upload_and_download_roundtrip(l1, tmp_path):
    payload = bytes(range(256)) * 64
    l1.session.put(payload, "/tmp/roundtrip.bin")
    assert l1.session.run("sha256sum /tmp/roundtrip.bin").stdout.split()[0] == \
        hashlib.sha256(payload).hexdigest()
    l1.session.get("/tmp/roundtrip.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == payload
