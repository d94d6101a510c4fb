"""A build step that hangs ends at its deadline, naming its stage, and leaves nothing behind."""

import os
import subprocess
import time

import pytest

from harness.base.errors import StageTimeout
from harness.images.build_step import run as _run


def test_a_hanging_step_ends_at_its_deadline_with_its_children(tmp_path):
    log = tmp_path / "step.log"
    # A child of the step's shell, which must die with it; unique, so that another test
    # run on the machine at the same time is never taken for a leftover of this one.
    marker = f"sleep 31.{os.getpid()}{time.monotonic_ns() % 100000}"
    began = time.monotonic()
    with log.open("w") as out, pytest.raises(StageTimeout) as e:
        _run(["bash", "-c", f"echo compiling; {marker}; true"], out, "image build: test",
             interval=0.2, deadline_s=1.0)
    assert time.monotonic() - began < 10
    assert e.value.stage == "image build: test"
    assert "still running" in e.value.message and "compiling" in e.value.details
    time.sleep(0.2)
    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    assert left == ""
