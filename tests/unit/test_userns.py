"""The private namespaces a foreign rootfs's second stage runs in: real ones, on this kernel.

What is checked is what the second stage relies on: root there with the host's ids
mapped one to one (so that chown keeps owners), a binfmt_misc of its own (so that
the qemu-user handler registered there never shows on the host), and nothing left
once the command ends.
"""

import os
import subprocess
from pathlib import Path

import pytest

from harness.base import userns
from harness.images import foreign
from harness.platforms import AARCH64

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mapping the host's ids takes root")

HOST_BINFMT = Path("/proc/sys/fs/binfmt_misc")


def _in_ns(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(userns.command(["sh", "-c", script, "sh", *args]),
                          capture_output=True, text=True, timeout=60)


def test_root_there_with_the_hosts_ids_mapped_one_to_one(tmp_path):
    done = _in_ns('id -u; cat /proc/self/uid_map; touch "$1"; chown 101:102 "$1"; echo $$',
                  str(tmp_path / "f"))
    assert done.returncode == 0, done.stderr
    uid, mapping, pid = done.stdout.split("\n", 2)
    assert uid == "0" and mapping.split() == ["0", "0", str(userns.IDS)]
    assert pid.strip() == "1"  # PID 1 of its own PID namespace
    st = (tmp_path / "f").stat()
    assert (st.st_uid, st.st_gid) == (101, 102)  # as the host sees them


def test_its_exit_code_is_the_commands():
    assert _in_ns("exit 7").returncode == 7


def test_a_handler_registered_there_never_shows_on_the_host():
    registration, why_not = foreign.qemu_user(AARCH64)
    if registration is None:
        pytest.skip(why_not)
    before = sorted(p.name for p in HOST_BINFMT.iterdir()) if HOST_BINFMT.is_dir() else []
    done = _in_ns('mount -t proc proc /proc && mount -t binfmt_misc b /proc/sys/fs/binfmt_misc'
                  ' && printf %s "$1" > /proc/sys/fs/binfmt_misc/register'
                  ' && ls /proc/sys/fs/binfmt_misc', registration)
    assert done.returncode == 0, done.stderr
    name = registration.split(":")[1]
    assert name in done.stdout.split()
    after = sorted(p.name for p in HOST_BINFMT.iterdir()) if HOST_BINFMT.is_dir() else []
    assert after == before and name not in after


def test_without_the_interpreter_the_reason_names_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(foreign, "BINFMT_D", tmp_path)
    registration, why_not = foreign.qemu_user(AARCH64)
    assert registration is None and "apt-get install qemu-user-static" in why_not
