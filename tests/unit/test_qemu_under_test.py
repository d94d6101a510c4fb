"""What the QEMU under test says of itself, parsed (the probe itself runs in tests/vm)."""

import dataclasses

from harness.qemu_under_test import QemuUnderTest, parse_accelerators, parse_properties

ACCEL_HELP = "Accelerators supported in QEMU binary:\nqtest\ntcg\nkvm\n"
VFIO_PCI_HELP = """vfio-pci options:
  host=<str>
  iommufd=<link<iommufd>>
  x-no-mmap=<bool>       -  (default: false)
  sysfsdev=<str>
"""


def under_test(**changes) -> QemuUnderTest:
    base = QemuUnderTest(path="qemu-system-x86_64", origin="packaged in the rootfs",
                         sha256="ab" * 32, version="QEMU emulator version 11.1.3",
                         accelerators=("qtest", "tcg", "kvm"), has_iommufd_object=True,
                         has_dmabuf_event=True,
                         vfio_pci_properties=("host", "iommufd", "x-no-mmap"))
    return dataclasses.replace(base, **changes)


def test_accelerators_without_the_heading():
    assert parse_accelerators(ACCEL_HELP) == ("qtest", "tcg", "kvm")


def test_vfio_pci_properties():
    assert parse_properties(VFIO_PCI_HELP) == ("host", "iommufd", "sysfsdev", "x-no-mmap")


def test_facts_carry_what_shapes_the_verdicts():
    facts = under_test(has_dmabuf_event=False).facts()
    assert (facts.version, facts.has_dmabuf_event, facts.has_iommufd_object) == \
        ("QEMU emulator version 11.1.3", False, True)
    assert under_test().record()["sha256"] == "ab" * 32
