"""Cells that cannot run for a reason of the environment say why."""

from harness.l1_vfio import Inventory
from harness.l2 import backend
from harness.scenario import _environment_gap


def inventory(**changes) -> Inventory:
    base = dict(kernel="7.2.13", cmdline="", iommus=("dmar0",), dev_iommu=True,
                dev_vfio_container=True, devices=())
    return Inventory(**{**base, **changes})


def test_kernel_without_iommufd_skips_the_iommufd_backend():
    reason = _environment_gap(None, backend("iommufd"), inventory(dev_iommu=False))
    assert reason == "L1 kernel 7.2.13 has no /dev/iommu, so no iommufd backend"


def test_kernel_without_the_container_skips_the_legacy_backend():
    reason = _environment_gap(None, backend("legacy"), inventory(dev_vfio_container=False))
    assert reason == "L1 kernel 7.2.13 has no /dev/vfio/vfio, so no legacy backend"


def test_legacy_on_a_complete_kernel_has_no_gap():
    assert _environment_gap(None, backend("legacy"), inventory()) is None
