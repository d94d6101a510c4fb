"""A bash script of an image build, with its deadline and its failure in the build's words."""

import subprocess

from harness.base.errors import HarnessError, StageTimeout


def shell(script: str, what: str) -> None:
    try:
        proc = subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True,
                              text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise StageTimeout(f"{what} did not finish in 900 s", stage="image build") from None
    if proc.returncode != 0:
        raise HarnessError(f"{what} failed (exit {proc.returncode})", stage="image build",
                           details=proc.stderr[-3000:])
