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


@pytest.mark.parametrize("port", ["70000", "0", "ssh"])
def test_a_port_that_is_no_port(tmp_path, port):
    p = cli("run", "--ssh-port", port, cache=tmp_path)
    assert p.returncode == 2 and "--ssh-port" in p.stderr
    assert "Traceback" not in p.stderr


def test_an_unwritable_results_directory(tmp_path):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):  # root writes anyway: use a path below a file instead
            target = tmp_path / "a-file" / "results"
            (tmp_path / "a-file").write_text("")
        else:
            target = locked / "results"
        from harness.cli import _results_dir
        with pytest.raises(BadInput, match=f"cannot write results to {target}"):
            _results_dir(target)
    finally:
        locked.chmod(0o700)


def test_report_of_cells_that_lack_fields(tmp_path):
    (tmp_path / "results.json").write_text('{"cells": [{"id": "x", "outcome": "pass"}]}')
    p = cli("report", "html", str(tmp_path), cache=tmp_path)
    assert p.returncode == 2
    assert "cell 0 lacks viommu, backend, kernel, check, expected, met" in p.stderr
    assert "Traceback" not in p.stderr


def test_merging_an_interrupted_shard_is_refused(tmp_path):
    shard = tmp_path / "shard"
    shard.mkdir()
    (shard / "results.json").write_text('{"run": {"complete": false}, "cells": []}')
    p = cli("report", "merge", str(shard), "--out", str(tmp_path / "m"), cache=tmp_path)
    assert p.returncode == 2 and "is incomplete" in p.stderr


@pytest.mark.parametrize("manifest", ['{"name": "x"}', '{"files": {"bzImage": 3}}', "[1, 2]",
                                      '{"files": {"bzImage": {"size": "big"}}}'])
def test_a_manifest_of_the_wrong_shape_is_not_intact(tmp_path, manifest):
    from harness.images import verify

    (tmp_path / "manifest.json").write_text(manifest)
    assert "no valid manifest" in verify(tmp_path)


def test_exit_code_3_when_only_deadlines_ended_cells():
    from harness.matrix import Cell, CellResult
    from harness.results import exit_code

    cell = Cell("intel-iommu", "legacy", "dmabuf", "p2p-dma")
    late = CellResult(cell, "error", "L2 DMA: edu DMA still running", {"deadline": True}, 1.0)
    wrong = CellResult(cell, "fail", "the bytes did not arrive", {}, 1.0)
    fine = CellResult(cell, "pass", "", {}, 1.0)
    assert exit_code([fine]) == 0
    assert exit_code([fine, late]) == 3
    assert exit_code([late, wrong]) == 1
    assert exit_code([]) == 1
