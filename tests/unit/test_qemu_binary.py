from harness.l0.qemu_binary import parse_version


def test_parse_version_debian_strings():
    debian = "QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"
    assert parse_version(debian) == (7, 2, 19)
    assert parse_version("QEMU emulator version 11.1.3 (Debian 1:11.1.3+ds-1)") == (11, 1, 3)
    assert parse_version("QEMU emulator version 10.0") == (10, 0, 0)
    assert parse_version("GNU bash, version") is None
