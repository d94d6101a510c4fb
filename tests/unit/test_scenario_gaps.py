"""Cells that cannot run for a reason of the environment say why."""

from harness.collect.scenario import PassedThrough
from harness.l1.vfio import Inventory
from harness.l2.backends import backend
from harness.run.runner import _environment_gap
from tests.unit.test_l2_capabilities import under_test


def through(**changes) -> PassedThrough:
    base = dict(kernel="7.2.13", cmdline="", iommus=("dmar0",), dev_iommu=True,
                dev_vfio_container=True, devices=())
    return PassedThrough({}, {}, {}, Inventory(**{**base, **changes}))


def test_kernel_without_iommufd_skips_the_iommufd_backend():
    reason = _environment_gap(backend("iommufd"), through(dev_iommu=False), under_test())
    assert reason == "L1 kernel 7.2.13 has no /dev/iommu, so no iommufd backend"


def test_kernel_without_the_container_skips_the_legacy_backend():
    reason = _environment_gap(backend("legacy"), through(dev_vfio_container=False), under_test())
    assert reason == "L1 kernel 7.2.13 has no /dev/vfio/vfio, so no legacy backend"


def test_qemu_without_iommufd_skips_the_iommufd_backend():
    reason = _environment_gap(backend("iommufd"), through(), under_test(has_iommufd_object=False))
    assert reason == "the QEMU under test (QEMU emulator version 11.1.3) has no iommufd object"


def test_legacy_on_a_complete_kernel_has_no_gap():
    assert _environment_gap(backend("legacy"), through(), under_test()) is None
