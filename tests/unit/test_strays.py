"""What killed runs leave behind, found and removed: a real QEMU whose harness process is gone,
and its file in /dev/shm, seen by `doctor` and removed by `doctor --clean`."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.l0 import strays


def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def stray_qemu():
    """An L0 QEMU as a SIGKILLed run leaves it: its ivshmem file in /dev/shm named after a
    harness process that is gone, the QEMU still running (started here, never waited for
    by its owner)."""
    qemu = shutil.which("qemu-system-x86_64")
    if not qemu:
        pytest.skip("no qemu-system-x86_64 on this host")
    owner = _dead_pid()
    shm = strays.SHM / f"vfio-harness-{owner}-{time.monotonic_ns()}.ivshmem"
    proc = subprocess.Popen([qemu, "-M", "none", "-nodefaults", "-display", "none",
                             "-object", f"memory-backend-file,id=iv,share=on,mem-path={shm},"
                                        f"size=1M"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not shm.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert shm.exists(), "QEMU did not make its ivshmem file"
    yield proc, owner, shm
    proc.kill()
    proc.wait()
    shm.unlink(missing_ok=True)


@pytest.mark.alone  # an L1 boot beside it would sweep the stray's file first
def test_a_qemu_and_its_file_whose_harness_is_gone_are_strays(stray_qemu):
    proc, owner, shm = stray_qemu
    found = strays.find()
    qemu = [s for s in found if s.pid == proc.pid]
    file = [s for s in found if s.path == shm]
    assert len(qemu) == 1 and qemu[0].owner == owner and qemu[0].kind == "L0 QEMU"
    assert 0 <= qemu[0].age_s < 60
    assert len(file) == 1 and file[0].owner == owner
    assert f"kill -9 {proc.pid}" in qemu[0].describe()
    assert "vfio-harness doctor --clean" in qemu[0].describe()
    # a file of a live harness process is nobody's stray
    mine = strays.SHM / f"vfio-harness-{__import__('os').getpid()}-1.ivshmem"
    mine.write_bytes(b"")
    try:
        assert all(s.path != mine for s in strays.find())
    finally:
        mine.unlink()


@pytest.mark.alone  # --clean removes every stray on the machine: a test beside it may own one
def test_doctor_shows_the_stray_and_clean_removes_it(stray_qemu, tmp_path):
    proc, owner, shm = stray_qemu

    def doctor(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "harness", "--cache-dir",
                               str(tmp_path / "cache"), "doctor", *args],
                              capture_output=True, text=True, timeout=120)

    seen = doctor()
    assert seen.returncode == 1
    lines = [x for x in seen.stdout.splitlines() if x.startswith("[!!] stray")]
    assert any(f"L0 QEMU pid {proc.pid}" in x and f"harness process {owner}" in x
               for x in lines), seen.stdout
    assert any(str(shm) in x for x in lines)
    cleaned = doctor("--clean")
    assert f"removed L0 QEMU {proc.pid} (harness process {owner} is gone)" in cleaned.stdout
    assert f"removed /dev/shm file {shm}" in cleaned.stdout
    assert proc.wait(timeout=10) == -9  # SIGKILL, as the doctor sent it
    assert not shm.exists()
    assert not [x for x in cleaned.stdout.splitlines() if x.startswith("[!!] stray")]


def test_a_file_of_a_gone_process_with_no_qemu_is_a_stray_of_its_own(tmp_path):
    gone = _dead_pid()
    left = tmp_path / f"vfio-harness-{gone}-7.qmp"
    left.write_bytes(b"")
    (tmp_path / "vfio-harness-notapid-7.qmp").write_bytes(b"")
    (found,) = strays.shm_files(tmp_path)
    assert found.path == left and found.command() == f"rm -f {left}"
    found.remove()
    assert not left.exists()
    assert strays.shm_files(Path(tmp_path)) == []
