"""Series read and applied with git's own tools, on a small tree made here with git."""

import subprocess
from pathlib import Path

import pytest

from harness.base.errors import BadInput
from harness.images.series import Series

DATA = Path(__file__).parent.parent / "data" / "series"
GIT = ["git", "-c", "user.name=A Developer", "-c", "user.email=dev@example.org"]


def git(tree: Path, *args: str) -> str:
    return subprocess.run([*GIT, *args], cwd=tree, check=True, capture_output=True,
                          text=True).stdout


@pytest.fixture
def made(tmp_path):
    """A tree, and a two-patch series against it as format-patch writes it (with a cover)."""
    repo = tmp_path / "repo"
    (repo / "drivers").mkdir(parents=True)
    (repo / "drivers" / "a.c").write_text("int a(void)\n{\n\treturn 1;\n}\n")
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    git(repo, "tag", "base")
    (repo / "drivers" / "a.c").write_text("int a(void)\n{\n\treturn 2;\n}\n")
    git(repo, "commit", "-qam", "drivers: a returns 2")
    (repo / "drivers" / "b.c").write_text("int b(void);\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "drivers: add b")
    mbox = tmp_path / "series.mbox"
    mbox.write_text(git(repo, "format-patch", "--cover-letter", "--stdout", "base"))
    pristine = tmp_path / "pristine"
    git(repo, "worktree", "add", "-q", "--detach", str(pristine), "base")
    (pristine / ".git").unlink()  # a plain tree, as the kernel source is
    return mbox, pristine


def test_a_series_is_its_patches_in_order(made):
    mbox, _ = made
    s = Series.load(mbox)
    assert [p.subject for p in s.patches] == ["drivers: a returns 2", "drivers: add b"]
    assert s.title == "*** SUBJECT HERE ***"  # format-patch's cover letter template
    assert s.files() == ["drivers/a.c", "drivers/b.c"]
    assert s.name == f"series-{s.sha256[:12]}"


def test_applying_changes_only_the_copy_even_through_hard_links(made, tmp_path):
    mbox, pristine = made
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-al", str(pristine), str(tree)], check=True)
    Series.load(mbox).apply(tree)
    assert "return 2" in (tree / "drivers" / "a.c").read_text()
    assert (tree / "drivers" / "b.c").exists()
    assert "return 1" in (pristine / "drivers" / "a.c").read_text()  # the pristine tree stays


def test_a_directory_of_patches_is_a_series(made, tmp_path):
    mbox, _ = made
    out = tmp_path / "dir"
    out.mkdir()
    subprocess.run(["git", "mailsplit", f"-o{out}", str(mbox)], check=True, capture_output=True)
    assert len(Series.load(out).patches) == 2


def test_a_patch_that_does_not_apply_is_named_with_its_file(made, tmp_path):
    mbox, pristine = made
    (pristine / "drivers" / "a.c").write_text("int a(void)\n{\n\treturn 7;\n}\n")
    with pytest.raises(BadInput) as e:
        Series.load(mbox).apply(pristine)
    assert e.value.exit_code == 2
    assert 'patch 1/2 "drivers: a returns 2"' in e.value.message
    assert "drivers/a.c" in e.value.message


def test_the_harness_series_does_not_apply_where_its_context_is_gone():
    s = Series.load(DATA / "does-not-apply.mbox")
    assert s.files() == ["drivers/vfio/pci/vfio_pci_dmabuf.c"]


@pytest.mark.parametrize("name", ["broken.mbox", "missing.mbox"])
def test_what_is_no_series_is_bad_input(name):
    with pytest.raises(BadInput):
        Series.load(DATA / name)


def test_an_empty_directory_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="is empty"):
        Series.load(tmp_path)


def test_the_trace_events_a_qemu_series_adds_or_changes():
    s = Series.load(DATA / "qemu-trace-events.mbox")
    assert s.trace_events() == ["vfio_pci_write_config", "vfio_region_dmabuf_revoke"]
    assert s.record()["files"] == ["hw/vfio/trace-events"]


def test_a_kernel_series_adds_no_qemu_trace_event():
    assert Series.load(DATA / "0001-comment-only.mbox").trace_events() == []


def test_files_are_shown_beside_the_cells_that_run_them():
    from harness.checks.matrix import exercised_by

    assert ("p2p-dma", "iommufd") in exercised_by("drivers/iommu/iommufd/io_pagetable.c")
    assert ("p2p-dma", "legacy") not in exercised_by("drivers/iommu/iommufd/io_pagetable.c")
    assert exercised_by("Documentation/driver-api/vfio.rst") == []


def test_a_work_tree_moves_between_prefixes_touching_only_the_patches_in_between(made, tmp_path):
    """A bisect step starts from the previous step's tree: forward applies, back reverts,
    and a file no patch in between touches keeps its time (make leaves its objects)."""
    import os

    mbox, pristine = made
    s = Series.load(mbox)
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-al", str(pristine), str(tree)], check=True)
    s.own_files(tree)
    s.move(tree, 0, 2)
    assert "return 2" in (tree / "drivers" / "a.c").read_text() and (tree / "drivers/b.c").exists()
    os.utime(tree / "drivers" / "a.c", (1, 1))
    s.move(tree, 2, 1)
    assert not (tree / "drivers" / "b.c").exists()
    assert (tree / "drivers" / "a.c").stat().st_mtime == 1  # patch 1 not touched again
    s.move(tree, 1, 0)
    assert "return 1" in (tree / "drivers" / "a.c").read_text()
    assert "return 1" in (pristine / "drivers" / "a.c").read_text()


def test_a_prefix_is_a_series_of_its_own_that_knows_its_length(made):
    s = Series.load(made[0])
    one = s.prefix(1)
    assert [p.subject for p in one.patches] == ["drivers: a returns 2"]
    assert one.sha256 != s.sha256 and one.name != s.name
    assert one.record()["first"] == 1 and one.record()["of"] == 2
    assert "of" not in s.record() and s.prefix(2) == s
    with pytest.raises(ValueError):
        s.prefix(3)
