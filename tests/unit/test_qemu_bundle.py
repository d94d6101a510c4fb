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


def _cross_built(tmp_path: Path) -> Path:
    """A real arm64 program (aarch64-linux-gnu-gcc) in a build's bin/, needing libdep.so.1
    from ../deps by its RUNPATH and libother.so.2 from nowhere it names."""
    import shutil
    import subprocess
    gcc = shutil.which("aarch64-linux-gnu-gcc")
    if gcc is None:
        pytest.skip("aarch64-linux-gnu-gcc is missing (ci/setup.sh installs it)")
    (tmp_path / "deps").mkdir()
    (tmp_path / "bin").mkdir()
    for name, soname in (("dep", "libdep.so.1"), ("other", "libother.so.2")):
        (tmp_path / f"{name}.c").write_text(f"int {name}(void) {{ return 1; }}\n")
        subprocess.run([gcc, "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o",
                        str(tmp_path / "deps" / soname), str(tmp_path / f"{name}.c")],
                       check=True, timeout=120)
    (tmp_path / "main.c").write_text("int dep(void); int other(void);\n"
                                     "int main(void) { return dep() + other(); }\n")
    binary = tmp_path / "bin" / "qemu-system-aarch64"
    subprocess.run([gcc, "-o", str(binary), str(tmp_path / "main.c"), "-L",
                    str(tmp_path / "deps"), "-l:libdep.so.1", "-l:libother.so.2",
                    "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../deps"], check=True, timeout=120)
    (tmp_path / "deps" / "libother.so.2").rename(tmp_path / "libother.so.2")
    return binary


def test_an_arm64_binarys_libraries_are_found_without_l0s_loader(tmp_path):
    """L0's ldd cannot read an arm64 binary: its RUNPATH, then L0's aarch64 multiarch
    directories (a cross build's libraries) are where its libraries are looked for."""
    from harness.l2.bundle import resolve_on_l0, runpath
    binary = _cross_built(tmp_path)
    bundle = Bundle.find(binary, AARCH64)
    assert runpath(binary) == [tmp_path / "bin" / ".." / "deps"]
    assert resolve_on_l0("libdep.so.1", bundle) == tmp_path / "deps" / "libdep.so.1"
    root = tmp_path / "root"
    assert resolve_on_l0("libother.so.2", bundle, root) is None
    (root / "usr/lib/aarch64-linux-gnu").mkdir(parents=True)
    (tmp_path / "libother.so.2").rename(root / "usr/lib/aarch64-linux-gnu/libother.so.2")
    assert resolve_on_l0("libother.so.2", bundle, root) == \
        root / "usr/lib/aarch64-linux-gnu/libother.so.2"
