"""Kernel config fragments and the check that required options stuck."""

import pytest

from harness.base.errors import HarnessError
from harness.images import kconfig
from harness.images.recipe import Recipe

FINAL = """\
CONFIG_IOMMUFD=y
CONFIG_VFIO=y
# CONFIG_PCI_P2PDMA is not set
CONFIG_NR_CPUS=64
"""


def test_parse_set_unset_and_values():
    opts = kconfig.parse(FINAL)
    assert opts["CONFIG_IOMMUFD"] == "y"
    assert opts["CONFIG_PCI_P2PDMA"] == "n"
    assert opts["CONFIG_NR_CPUS"] == "64"


def test_parse_refuses_garbage():
    with pytest.raises(HarnessError, match="line 2 is not a kconfig assignment"):
        kconfig.parse("CONFIG_A=y\nIOMMUFD on please\n")


def test_mismatches_absent_counts_as_not_set():
    final = kconfig.parse(FINAL)
    assert kconfig.mismatches({"CONFIG_VFIO_PCI_DMABUF": "n"}, final) == []
    assert kconfig.mismatches({"CONFIG_VFIO_PCI_DMABUF": "y"}, final) == [
        ("CONFIG_VFIO_PCI_DMABUF", "y", "n")]


def test_check_names_the_first_option_that_did_not_stick():
    final = kconfig.parse(FINAL)
    required = {"CONFIG_IOMMUFD": "y", "CONFIG_PCI_P2PDMA": "y", "CONFIG_ZONE_DEVICE": "y"}
    with pytest.raises(HarnessError) as e:
        kconfig.check(required, final, "dmabuf")
    assert "CONFIG_PCI_P2PDMA did not stick in kernel variant 'dmabuf'" in str(e.value)
    assert "CONFIG_ZONE_DEVICE" in str(e.value)  # the others are listed too


def test_recipe_fragments_parse_and_variants_differ_in_dmabuf():
    recipe = Recipe.load()
    dmabuf = recipe.kernels["dmabuf"].required_options()
    nodmabuf = recipe.kernels["no-dmabuf"].required_options()
    assert dmabuf["CONFIG_IOMMUFD"] == nodmabuf["CONFIG_IOMMUFD"] == "y"
    assert dmabuf["CONFIG_VFIO_DEVICE_CDEV"] == "y"
    assert (dmabuf["CONFIG_VFIO_PCI_DMABUF"], nodmabuf["CONFIG_VFIO_PCI_DMABUF"]) == ("y", "n")
    assert recipe.kernels["dmabuf"].has_dmabuf and not recipe.kernels["no-dmabuf"].has_dmabuf
