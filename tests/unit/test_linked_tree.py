"""A series' source tree linked to the pristine one: a few entries, its own files its own,
git apply writing only there, and the pristine tree untouched (real files, real git)."""

import os
from pathlib import Path

from harness.images.linked_tree import link_tree
from harness.images.series import Series

PATCH = """\
From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001
From: A Developer <dev@example.org>
Date: Sun, 6 Dec 2026 10:00:00 +0000
Subject: [PATCH] vfio/pci: one line, and a new file

---
 drivers/vfio/pci/dmabuf.c | 2 +-
 drivers/vfio/pci/new/n.c  | 1 +
 2 files changed, 2 insertions(+), 1 deletion(-)

diff --git a/drivers/vfio/pci/dmabuf.c b/drivers/vfio/pci/dmabuf.c
--- a/drivers/vfio/pci/dmabuf.c
+++ b/drivers/vfio/pci/dmabuf.c
@@ -1 +1 @@
-int revoke;
+int revoked;
diff --git a/drivers/vfio/pci/new/n.c b/drivers/vfio/pci/new/n.c
new file mode 100644
--- /dev/null
+++ b/drivers/vfio/pci/new/n.c
@@ -0,0 +1 @@
+int n;
--
2.47.3
"""


def _pristine(root: Path) -> Path:
    for rel in ("Makefile", "drivers/Makefile", "drivers/vfio/pci/dmabuf.c",
                "drivers/vfio/pci/core.c", "drivers/vfio/group.c", "drivers/net/a.c",
                "include/linux/pci.h", "arch/x86/Kconfig"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("int revoke;\n" if rel.endswith("dmabuf.c") else rel + "\n")
    (root / "scripts").mkdir()
    (root / "scripts" / "arch").symlink_to("../arch")  # the kernel has relative links too
    old = 1_700_000_000
    os.utime(root / "drivers/vfio/pci/dmabuf.c", (old, old))
    return root


def test_a_linked_tree_is_a_few_entries_its_own_only_where_the_series_writes(tmp_path):
    pristine = _pristine(tmp_path / "pristine")
    tree = tmp_path / "tree"
    made = link_tree(pristine, tree, ["drivers/vfio/pci/dmabuf.c", "drivers/vfio/pci/new/n.c"])
    assert made < 15
    assert (tree / "include").is_symlink() and (tree / "Makefile").is_symlink()
    assert (tree / "drivers/net").is_symlink() and (tree / "drivers/vfio/group.c").is_symlink()
    for real in ("drivers", "drivers/vfio", "drivers/vfio/pci", "drivers/vfio/pci/new"):
        assert (tree / real).is_dir() and not (tree / real).is_symlink(), real
    own = tree / "drivers/vfio/pci/dmabuf.c"
    assert own.is_file() and not own.is_symlink() and own.stat().st_nlink == 1
    # its time is the pristine file's: make takes the objects built from it as up to date
    assert own.stat().st_mtime == (pristine / "drivers/vfio/pci/dmabuf.c").stat().st_mtime
    assert (tree / "scripts/arch/x86/Kconfig").read_text() == "arch/x86/Kconfig\n"


def test_git_apply_writes_only_in_the_linked_tree(tmp_path):
    pristine = _pristine(tmp_path / "pristine")
    mbox = tmp_path / "one.mbox"
    mbox.write_text(PATCH)
    series = Series.load(mbox)
    assert series.files() == ["drivers/vfio/pci/dmabuf.c", "drivers/vfio/pci/new/n.c"]
    tree = tmp_path / "tree"
    link_tree(pristine, tree, series.files())
    series.apply(tree)
    assert (tree / "drivers/vfio/pci/dmabuf.c").read_text() == "int revoked;\n"
    assert (tree / "drivers/vfio/pci/new/n.c").read_text() == "int n;\n"
    assert (pristine / "drivers/vfio/pci/dmabuf.c").read_text() == "int revoke;\n"
    assert not (pristine / "drivers/vfio/pci/new").exists()


def test_a_tree_linked_from_a_linked_tree_points_at_the_pristine_one(tmp_path):
    pristine = _pristine(tmp_path / "pristine")
    whole = tmp_path / "whole"
    link_tree(pristine, whole, ["drivers/vfio/pci/dmabuf.c"])
    bisect = tmp_path / "bisect"
    link_tree(whole, bisect, ["drivers/vfio/pci/dmabuf.c"])
    assert os.readlink(bisect / "include") == str(pristine / "include")
    own = bisect / "drivers/vfio/pci/dmabuf.c"
    assert not own.is_symlink() and own.stat().st_ino != (whole / own.relative_to(
        bisect)).stat().st_ino


def test_removing_a_linked_tree_never_reaches_through_its_links(tmp_path):
    import shutil

    pristine = _pristine(tmp_path / "pristine")
    tree = tmp_path / "tree"
    link_tree(pristine, tree, ["drivers/vfio/pci/dmabuf.c"])
    shutil.rmtree(tree)
    assert (pristine / "include/linux/pci.h").is_file()
    assert (pristine / "drivers/vfio/group.c").is_file()
