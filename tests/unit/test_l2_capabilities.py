"""What the QEMU under test says of itself, parsed from what it said in L1 (QEMU 11.1.3 and
trixie's 10.0.13); the probe itself runs in tests/vm/test_l2.py."""

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.base.errors import BadInput
from harness.images.debian import file_record
from harness.l2.capabilities import (
    BuiltBinary,
    QemuUnderTest,
    greeting_version,
    parse,
    probe_command,
    qmp_answers,
    qmp_script,
    sections,
)

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


def test_the_version_comes_from_the_greeting_as_version_prints_it():
    assert greeting_version(sections(PROBE)["qmp"]) == sections(PROBE)["version"].splitlines()[0]
    bare = '{"QMP": {"version": {"qemu": {"micro": 50, "minor": 0, "major": 11}, ' \
           '"package": ""}, "capabilities": []}}'
    assert greeting_version(bare) == "QEMU emulator version 11.0.50"
    assert greeting_version(sections(TRIXIE)["qmp"]) is None  # it never greeted
    without_section = {k: v for k, v in sections(PROBE).items() if k != "version"}
    assert parse(without_section, "packaged").version == \
        "QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)"


def _digest_section(built: BuiltBinary | None) -> str:
    """The probe's sha256 answer for `env` (a program, not a shell builtin, standing in for
    the binary: what is tested is the shell that decides whether to hash), run by this
    host's sh."""
    done = subprocess.run(["sh", "-c", probe_command("env", built=built)],
                          capture_output=True, text=True, timeout=60)
    return sections(done.stdout)["sha256"]


def test_the_recorded_sha256_is_taken_only_for_the_file_as_built(tmp_path):
    program = Path(os.path.realpath(shutil.which("env") or "/usr/bin/env"))
    st = program.stat()
    made_up = "f" * 64  # not its sha256: seen in the answer only if the record was taken
    same = BuiltBinary(str(program), made_up, st.st_size, int(st.st_mtime))
    assert _digest_section(same) == f"{made_up}  {program}"
    real = hashlib.sha256(program.read_bytes()).hexdigest()
    for other in (dataclasses.replace(same, mtime=same.mtime + 1),
                  dataclasses.replace(same, size=same.size + 1),
                  dataclasses.replace(same, path=str(tmp_path / "env")), None):
        assert _digest_section(other) == f"{real}  {program}"


def test_the_rootfs_records_a_file_as_l1_will_resolve_it(tmp_path):
    (tmp_path / "usr/lib/qemu").mkdir(parents=True)
    (tmp_path / "usr/bin").mkdir()
    binary = tmp_path / "usr/lib/qemu/qemu-system-x86_64"
    binary.write_bytes(b"\x7fELF qemu")
    os.utime(binary, (1_700_000_000.7, 1_700_000_000.7))
    (tmp_path / "usr/bin/qemu-system-x86_64").symlink_to("../lib/qemu/qemu-system-x86_64")
    (tmp_path / "usr/bin/absolute").symlink_to("/usr/lib/qemu/qemu-system-x86_64")
    want = {"path": "/usr/lib/qemu/qemu-system-x86_64",
            "sha256": hashlib.sha256(b"\x7fELF qemu").hexdigest(), "size": 9,
            "mtime": 1_700_000_000}
    assert file_record(tmp_path, "/usr/bin/qemu-system-x86_64") == want
    assert file_record(tmp_path, "/usr/bin/absolute") == want
    assert file_record(tmp_path, "/usr/bin/missing") is None
    assert BuiltBinary.from_record(want) == BuiltBinary(want["path"], want["sha256"], 9,
                                                        1_700_000_000)
    assert BuiltBinary.from_record(None) is None
