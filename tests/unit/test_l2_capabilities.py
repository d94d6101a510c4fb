"""What the QEMU under test says of itself, parsed from what it said in L1 (QEMU 11.1.3 and
trixie's 10.0.13); the probe itself runs in tests/vm/test_l2.py."""

import dataclasses
import json
from pathlib import Path

import pytest

from harness.base.errors import BadInput
from harness.l2.capabilities import QemuUnderTest, parse, qmp_answers, qmp_script, sections

DATA = Path(__file__).parent.parent / "data"
PROBE = (DATA / "qemu-11.1.3" / "probe.txt").read_text()
TRIXIE = (DATA / "qemu-10.0.13-trixie-probe.txt").read_text()


def under_test(**changes) -> QemuUnderTest:
    base = QemuUnderTest(path="/usr/bin/qemu-system-x86_64", origin="packaged in the rootfs",
                         sha256="ab" * 32, version="QEMU emulator version 11.1.3",
                         has_iommufd_object=True, has_dmabuf_event=True,
                         vfio_pci_properties=("host", "iommufd", "x-no-mmap"))
    return dataclasses.replace(base, **changes)


def with_reply(key: str, reply: dict) -> dict[str, str]:
    """The captured probe with one QMP answer replaced."""
    s = sections(PROBE)
    lines = [json.dumps({**reply, "id": key}) if qmp_answers(line).get(key) else line
             for line in s["qmp"].splitlines()]
    return {**s, "qmp": "\n".join(lines)}


def test_the_packaged_qemu_as_it_answered_in_l1():
    q = parse(sections(PROBE), "packaged")
    assert q.version == "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)"
    assert q.path == "/usr/bin/qemu-system-x86_64" and len(q.sha256) == 64
    assert q.has_iommufd_object and q.has_dmabuf_event
    assert {"host", "iommufd", "x-no-mmap"} <= set(q.vfio_pci_properties)


def test_one_qemu_start_answers_every_question():
    asked = [json.loads(line) for line in qmp_script().splitlines()]
    assert asked[0]["execute"] == "qmp_capabilities" and asked[-1]["execute"] == "quit"
    assert set(qmp_answers(sections(PROBE)["qmp"])) == {"objects", "vfio-pci", "dmabuf-event"}


def test_a_qemu_without_the_dmabuf_event_is_known_as_such():
    error = {"error": {"class": "GenericError",
                       "desc": "No trace events found matching 'vfio_region_dmabuf'"}}
    q = parse(with_reply("dmabuf-event", error), "a build")
    assert not q.has_dmabuf_event and not q.facts().has_dmabuf_event


def test_a_qemu_without_iommufd_is_known_as_such():
    q = parse(with_reply("objects", {"return": [{"name": "memory-backend-file"}]}), "a build")
    assert not q.has_iommufd_object


def test_a_vfio_pci_without_x_no_mmap_cannot_run_the_scenarios():
    props = {"return": [{"name": "host", "type": "str"}, {"name": "iommufd", "type": "link"}]}
    with pytest.raises(BadInput, match=r"vfio-pci without the properties x-no-mmap"):
        parse(with_reply("vfio-pci", props), "a build")


def test_no_vfio_pci_at_all_cannot_run_the_scenarios():
    error = {"error": {"class": "GenericError", "desc": "Device 'vfio-pci' not found"}}
    with pytest.raises(BadInput, match="has no vfio-pci device"):
        parse(with_reply("vfio-pci", error), "a build")


def test_something_that_is_not_qemu_is_refused_saying_what_it_printed():
    with pytest.raises(BadInput, match="does not look like QEMU: in L1 its --version printed "
                                       "'bash: /run/qemu-under-test: cannot execute binary"):
        parse({"version": "bash: /run/qemu-under-test: cannot execute binary file"}, "x")


def test_a_qemu_under_test_that_prints_nothing_does_not_run():
    with pytest.raises(BadInput, match="does not run in L1"):
        parse({"version": "\n"}, "x")


def test_trixies_qemu_names_itself_and_answers_nothing_over_qmp():
    s = sections(TRIXIE)
    assert s["version"].startswith("QEMU emulator version 10.0.13")
    assert qmp_answers(s["qmp"]) == {} and "invalid accelerator qtest" in s["qmp"]


def test_facts_carry_what_shapes_the_verdicts():
    facts = under_test(has_dmabuf_event=False).facts()
    assert (facts.version, facts.has_dmabuf_event, facts.has_iommufd_object) == \
        ("QEMU emulator version 11.1.3", False, True)
    assert under_test().record()["sha256"] == "ab" * 32
