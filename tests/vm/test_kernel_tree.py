"""A kernel tree of the user's, built out of tree with the harness's fragments (--kernel-tree).

The tree is the pinned source linked into the cache once (so its object tree stays warm
across runs: the first run is a full build, later ones are make's no-op)."""

import json
import shutil
import subprocess
import sys

import pytest


@pytest.fixture(scope="module")
def user_tree(store, images):
    pristine = store.kernel_source(store.recipe.kernels["dmabuf"])
    tree = store.cache / "test-trees" / "linux"
    if not (tree / "Makefile").exists():
        shutil.rmtree(tree, ignore_errors=True)
        tree.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(pristine), str(tree)], check=True, timeout=600)
    return tree


def test_a_kernel_tree_is_built_out_of_tree_and_booted(user_tree, tmp_path):
    p = subprocess.run([sys.executable, "-m", "harness", "run", "--kernel-tree", str(user_tree),
                        "--kernel", "dmabuf", "--viommu", "intel-iommu", "--results",
                        str(tmp_path)], capture_output=True, text=True, timeout=2400)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    run = json.loads((tmp_path / "results.json").read_text())["run"]
    assert run["kernel_trees"]["dmabuf"]["path"] == str(user_tree)
    assert f"O={user_tree}" not in p.stderr  # never built inside the user's tree
    assert not (user_tree / ".config").exists()


def test_not_a_kernel_tree_is_bad_input(tmp_path):
    p = subprocess.run([sys.executable, "-m", "harness", "run", "--kernel-tree", str(tmp_path),
                        "--results", str(tmp_path / "r")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "is not a kernel source tree" in p.stderr
