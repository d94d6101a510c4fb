"""Bad input gets one clear message and a non-zero exit code, never a bare traceback."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from harness import images as images_mod
from harness.errors import BadInput
from harness.images import ImageStore
from harness.recipe import Recipe


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "--cache-dir", str(cache), *args],
                          capture_output=True, text=True, timeout=120)


def test_missing_qemu(tmp_path):
    p = cli("--qemu", "/nonexistent/qemu-system-x86_64", "run", cache=tmp_path)
    assert p.returncode == 2
    assert "L0 QEMU '/nonexistent/qemu-system-x86_64' not found" in p.stderr
    assert "Traceback" not in p.stderr


def test_not_a_qemu(tmp_path):
    p = cli("--qemu", "/bin/true", "run", cache=tmp_path)
    assert p.returncode == 2
    assert "does not look like QEMU" in p.stderr


def test_too_old_qemu(tmp_path):
    old = tmp_path / "qemu-old"
    old.write_text("#!/bin/sh\necho 'QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2)'\n")
    old.chmod(0o755)
    p = cli("--qemu", str(old), "run", cache=tmp_path)
    assert p.returncode == 2
    assert "is 6.2.0, too old: need 7.0 or newer" in p.stderr


def test_unknown_viommu(tmp_path):
    p = cli("run", "--viommu", "smmuv3", cache=tmp_path)
    assert p.returncode == 2
    assert "invalid choice: 'smmuv3'" in p.stderr


def test_busy_ssh_port(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = cli("run", "--ssh-port", str(port), cache=tmp_path)
    assert p.returncode == 2
    assert f"port {port} on 127.0.0.1 is busy" in p.stderr
    assert "Traceback" not in p.stderr


def test_unknown_kernel_variant(tmp_path):
    p = cli("images", "build", "--kernel", "no-such-kernel", cache=tmp_path)
    assert p.returncode == 2
    assert "unknown kernel variant 'no-such-kernel'" in p.stderr


def test_no_space_for_the_cache(tmp_path, monkeypatch):
    store = ImageStore(Recipe.load(), tmp_path / "cache")
    real = images_mod.shutil.disk_usage
    monkeypatch.setattr(images_mod.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=3 * 2**30))
    with pytest.raises(BadInput, match=r"no space for the cache: 3.0 GiB free"):
        store._preflight(kernels=True, rootfs=True)


def test_images_list_on_an_empty_cache(tmp_path):
    p = cli("images", "list", cache=tmp_path)
    assert p.returncode == 0
    assert "kernel-dmabuf" in p.stdout and "not built" in p.stdout
