"""Processes never pull an artifact from under each other (real flock, real processes)."""

import subprocess
import sys
import textwrap
import time

import pytest

from harness.base.errors import StageTimeout
from harness.images.cache_lock import ArtifactLocks


def holder(artifacts, name: str, seconds: float, kind: str = "shared") -> subprocess.Popen:
    """Another process that uses (shared) or builds (exclusive) an artifact for a while."""
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from harness.images.cache_lock import ArtifactLocks
        locks = ArtifactLocks(Path({str(artifacts)!r}))
        artifact = Path({str(artifacts / name)!r})
        if {kind!r} == "shared":
            locks.hold_shared(artifact)
            print("held", flush=True)
            time.sleep({seconds})
        else:
            with locks.exclusive(artifact):
                print("held", flush=True)
                time.sleep({seconds})
                artifact.mkdir(parents=True, exist_ok=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_rebuild_waits_for_the_runs_that_boot_from_the_artifact_and_names_them(tmp_path):
    user = holder(tmp_path, "rootfs-abc", 30)
    try:
        with pytest.raises(StageTimeout) as e:
            with ArtifactLocks(tmp_path).exclusive(tmp_path / "rootfs-abc", seconds=1.0):
                pass
        assert e.value.stage == "image cache: rootfs-abc"
        assert "in use by other vfio-harness processes" in e.value.message
        assert f"pid {user.pid}" in e.value.details
    finally:
        user.kill()
        user.wait()


def test_the_lock_goes_with_a_killed_holder(tmp_path):
    user = holder(tmp_path, "rootfs-abc", 30)
    user.kill()
    user.wait()
    with ArtifactLocks(tmp_path).exclusive(tmp_path / "rootfs-abc", seconds=5.0):
        pass


def test_a_second_builder_waits_then_uses_what_the_first_built(tmp_path):
    from harness.images.recipe import Recipe
    from harness.images.store import ImageStore

    store = ImageStore(Recipe.load(), tmp_path)
    final = store.artifacts / "kernel-x"
    first = holder(store.artifacts, "kernel-x", 1.0, kind="exclusive")
    built = []
    began = time.monotonic()
    try:
        # the first "builds" an artifact without a manifest: verify says it is broken, so
        # the second builds too, but only after the first let go
        store._claimed(final, False, lambda: built.append(time.monotonic() - began))
    finally:
        first.wait()
    assert built and built[0] >= 0.5


def test_clean_keeps_an_artifact_in_use(tmp_path):
    from harness.images.recipe import Recipe
    from harness.images.store import ImageStore

    store = ImageStore(Recipe.load(), tmp_path)
    stale = store.artifacts / "kernel-old-0123"
    stale.mkdir(parents=True)
    user = holder(store.artifacts, stale.name, 30)
    try:
        assert stale not in store.clean()
        assert stale.exists()
    finally:
        user.kill()
        user.wait()
    assert stale in store.clean() and not stale.exists()
