"""What a QEMU built elsewhere needs, told on L0 and from L1's loader (captured output)."""

from pathlib import Path

import pytest

from harness.base.errors import BadInput
from harness.l2.bundle import Bundle, missing_libraries, missing_versions
from harness.platforms import AARCH64

LDD = (Path(__file__).parent.parent / "data" / "ldd-sid-qemu-on-bookworm.txt").read_text()


def elf(path: Path, machine: int, elf_class: int = 2) -> Path:
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5] = elf_class, 1
    header[18:20] = machine.to_bytes(2, "little")
    path.write_bytes(bytes(header))
    return path


def test_a_binary_built_against_a_newer_c_library_is_told_by_the_versions_it_needs():
    """sid's QEMU under bookworm's loader: what a build newer than L1 looks like."""
    assert {"GLIBC_2.42", "GLIBC_2.43", "SLIRP_4.9"} <= set(missing_versions(LDD))


def test_libraries_the_loader_cannot_find():
    out = "\tlibslirp-harness.so.0 => not found\n\tlibz.so.1 => /lib/libz.so.1 (0x7f)\n"
    assert missing_libraries(out) == ["libslirp-harness.so.0"]


@pytest.mark.parametrize("machine, name", [(183, r"AArch64 binary \(for --arch aarch64\)"),
                                           (243, "RISC-V binary"), (22, "s390 binary")])
def test_another_architecture_is_refused_on_l0(tmp_path, machine, name):
    with pytest.raises(BadInput, match=f"is a {name}: L1 is x86_64"):
        Bundle.find(elf(tmp_path / "qemu-system-x86_64", machine))


def test_an_x86_binary_is_refused_for_an_arm64_L1(tmp_path):
    with pytest.raises(BadInput, match=r"x86-64 binary \(for --arch x86_64\): L1 is aarch64"):
        Bundle.find(elf(tmp_path / "qemu-system-aarch64", 62), AARCH64)
    assert Bundle.find(elf(tmp_path / "qemu-system-aarch64", 183), AARCH64).platform is AARCH64


def test_a_32_bit_binary_is_refused(tmp_path):
    with pytest.raises(BadInput, match="32-bit"):
        Bundle.find(elf(tmp_path / "qemu-system-x86_64", 3, elf_class=1))


def test_a_build_directory_carries_its_modules_and_firmware(tmp_path):
    elf(tmp_path / "qemu-system-x86_64", 62)
    (tmp_path / "accel-qtest.so").write_bytes(b"")
    (tmp_path / "pc-bios").mkdir()
    (tmp_path / "pc-bios" / "bios-256k.bin").write_bytes(b"")
    (tmp_path / "lib").mkdir()
    b = Bundle.find(tmp_path)
    assert (b.modules, b.data, b.lib_dirs) == (tmp_path, tmp_path / "pc-bios",
                                               (tmp_path / "lib",))


def test_an_install_prefix_carries_its_lib_and_share(tmp_path):
    elf((tmp_path / "bin").mkdir() or tmp_path / "bin" / "qemu-system-x86_64", 62)
    (tmp_path / "lib" / "x86_64-linux-gnu" / "qemu").mkdir(parents=True)
    (tmp_path / "lib" / "x86_64-linux-gnu" / "qemu" / "hw-usb-host.so").write_bytes(b"")
    (tmp_path / "share" / "qemu").mkdir(parents=True)
    (tmp_path / "share" / "qemu" / "bios-256k.bin").write_bytes(b"")
    b = Bundle.find(tmp_path)
    assert b.modules == tmp_path / "lib" / "x86_64-linux-gnu" / "qemu"
    assert b.data == tmp_path / "share" / "qemu"


def test_a_script_goes_as_it_is(tmp_path):
    (tmp_path / "wrapper").write_text("#!/bin/sh\nexec qemu-system-x86_64 \"$@\"\n")
    b = Bundle.find(tmp_path / "wrapper")
    assert b.script and b.modules is None


def test_neither_elf_nor_script_nor_anything(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(BadInput, match="neither an executable"):
        Bundle.find(tmp_path / "notes.txt")
    with pytest.raises(BadInput, match="no qemu-system-x86_64 in"):
        Bundle.find(tmp_path)
