"""Artifact integrity: half-built or corrupted artifacts are never used."""

import json
from pathlib import Path

from harness.images.store import _publish, verify


def _artifact(tmp_path: Path) -> Path:
    final = tmp_path / "artifacts" / "kernel-x-0123"

    def fill(d: Path) -> dict:
        (d / "bzImage").write_bytes(b"\x00kernel" * 1000)
        (d / "config").write_text("CONFIG_VFIO=y\n")
        return {"versions": {"kernel": "7.2.13"}}

    _publish(final, "kernel-x", "0123", 0.0, fill)
    return final


def test_published_artifact_verifies_and_records_checksums(tmp_path):
    final = _artifact(tmp_path)
    assert verify(final) is None
    manifest = json.loads((final / "manifest.json").read_text())
    assert set(manifest["files"]) == {"bzImage", "config"}
    assert manifest["versions"] == {"kernel": "7.2.13"}
    assert not final.with_name(final.name + ".partial").exists()


def test_not_built(tmp_path):
    assert verify(tmp_path / "nothing") == "not built"


def test_interrupted_build_without_manifest(tmp_path):
    final = _artifact(tmp_path)
    (final / "manifest.json").unlink()
    assert "no valid manifest" in verify(final)


def test_corrupted_file_same_size(tmp_path):
    final = _artifact(tmp_path)
    data = bytearray((final / "bzImage").read_bytes())
    data[100] ^= 0xFF
    (final / "bzImage").write_bytes(bytes(data))
    assert verify(final) == "bzImage does not match its manifest (corrupted)"


def test_missing_file(tmp_path):
    final = _artifact(tmp_path)
    (final / "config").unlink()
    assert verify(final) == "config is missing"


def test_failed_fill_leaves_only_a_partial_dir(tmp_path):
    final = tmp_path / "artifacts" / "rootfs-abc"

    def fill(d: Path) -> dict:
        (d / "rootfs.qcow2").write_bytes(b"half")
        raise RuntimeError("debootstrap died")

    try:
        _publish(final, "rootfs", "abc", 0.0, fill)
    except RuntimeError:
        pass
    assert verify(final) == "not built"
    assert final.with_name(final.name + ".partial").exists()


def test_clean_removes_stale_and_partial_artifacts_only(tmp_path):
    from harness.images.recipe import Recipe
    from harness.images.store import ImageStore

    store = ImageStore(Recipe.load(), tmp_path / "cache")
    current = store.kernel_dir(store.recipe.kernels["dmabuf"])
    stale = store.artifacts / "kernel-dmabuf-0000000000000000"
    partial = store.artifacts / (store.rootfs_dir().name + ".partial")
    for d in (current, stale, partial):
        d.mkdir(parents=True)
        (d / "bzImage").write_bytes(b"x")
    assert store.stale() == sorted([stale, partial])
    assert sorted(store.clean()) == sorted([stale, partial])
    assert current.exists() and not stale.exists() and not partial.exists()
    store.clean(everything=True)
    assert not store.cache.exists()
