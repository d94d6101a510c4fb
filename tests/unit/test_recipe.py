"""Recipe keys: an artifact is rebuilt when, and only when, what it is made from changes."""

import shutil
from pathlib import Path

import pytest

from harness.base.errors import BadInput
from harness.images.recipe import Recipe, default_recipe_dir
from harness.platforms import AARCH64


@pytest.fixture
def recipe_dir(tmp_path: Path) -> Path:
    copy = tmp_path / "images"
    shutil.copytree(default_recipe_dir(), copy)
    return copy


def keys(directory: Path) -> dict[str, str]:
    r = Recipe.load(directory)
    return {**{f"kernel-{n}": v.key() for n, v in r.kernels.items()},
            "rootfs": r.rootfs.key(), "rootfs-base": r.rootfs.base_key()}


def test_keys_are_stable_and_distinct(recipe_dir):
    first, second = keys(recipe_dir), keys(recipe_dir)
    assert first == second
    assert len(set(first.values())) == len(first)


def test_variant_fragment_changes_only_that_variant(recipe_dir):
    before = keys(recipe_dir)
    with (recipe_dir / "kernel/no-dmabuf.config").open("a") as f:
        f.write("# a comment changes the file, so the key\n")
    after = keys(recipe_dir)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"kernel-no-dmabuf"}


def test_common_fragment_changes_both_kernels_not_rootfs(recipe_dir):
    before = keys(recipe_dir)
    with (recipe_dir / "kernel/vfio.config").open("a") as f:
        f.write("CONFIG_VFIO_DEBUGFS=y\n")
    after = keys(recipe_dir)
    assert {k for k in before if before[k] != after[k]} == {"kernel-dmabuf", "kernel-no-dmabuf",
                                                                  "kernel-debug"}


@pytest.mark.parametrize("fragment", ["guest.config", "choices.config"])
def test_a_guest_or_choices_fragment_changes_every_kernel_not_rootfs(recipe_dir, fragment):
    before = keys(recipe_dir)
    with (recipe_dir / "kernel" / fragment).open("a") as f:
        f.write("CONFIG_PACKET=y\n")
    after = keys(recipe_dir)
    assert {k for k in before if before[k] != after[k]} == {"kernel-dmabuf", "kernel-no-dmabuf",
                                                                  "kernel-debug"}


def test_init_script_changes_rootfs_but_reuses_the_bootstrap(recipe_dir):
    before = keys(recipe_dir)
    with (recipe_dir / "rootfs/harness-init").open("a") as f:
        f.write("# changed\n")
    after = keys(recipe_dir)
    assert {k for k in before if before[k] != after[k]} == {"rootfs"}


def test_package_list_changes_the_bootstrap(recipe_dir):
    before = keys(recipe_dir)
    with (recipe_dir / "rootfs/packages.txt").open("a") as f:
        f.write("strace\n")
    after = keys(recipe_dir)
    assert {k for k in before if before[k] != after[k]} == {"rootfs", "rootfs-base"}


def test_kernel_pin_changes_both_kernels(recipe_dir):
    before = keys(recipe_dir)
    toml = recipe_dir / "recipe.toml"
    toml.write_text(toml.read_text().replace('version = "7.2.13-1"', 'version = "7.2.14-1"'))
    after = keys(recipe_dir)
    assert {k for k in before if before[k] != after[k]} == {"kernel-dmabuf", "kernel-no-dmabuf",
                                                                  "kernel-debug"}


def test_missing_fragment_is_bad_input(recipe_dir):
    (recipe_dir / "kernel/dmabuf.config").unlink()
    with pytest.raises(BadInput, match="dmabuf.config, which does not exist"):
        Recipe.load(recipe_dir)


def test_missing_recipe_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match="no image recipe"):
        Recipe.load(tmp_path)


def test_the_recipes_own_patch_changes_both_kernels_and_their_source(recipe_dir):
    before, tag = keys(recipe_dir), Recipe.load(recipe_dir).kernels["dmabuf"].patches_tag()
    with (recipe_dir / "kernel/patches/vfio-pci-dmabuf-prompt.patch").open("a") as f:
        f.write(" \n")
    after = keys(recipe_dir)
    assert {k for k in before if before[k] != after[k]} == {"kernel-dmabuf", "kernel-no-dmabuf",
                                                                  "kernel-debug"}
    assert Recipe.load(recipe_dir).kernels["dmabuf"].patches_tag() not in ("", tag)


def test_the_unchecked_fragment_changes_only_its_variant_and_is_not_required(recipe_dir):
    before = keys(recipe_dir)
    with (recipe_dir / "kernel/no-dmabuf-p2pdma.config").open("a") as f:
        f.write("# a comment\n")
    assert {k for k, v in keys(recipe_dir).items() if before[k] != v} == {"kernel-no-dmabuf"}
    no_dmabuf = Recipe.load(recipe_dir).kernels["no-dmabuf"]
    # a user's kernel without VFIO dma-buf qualifies whether or not it has P2PDMA
    assert "CONFIG_PCI_P2PDMA" not in no_dmabuf.required_options()
    assert no_dmabuf.required_options()["CONFIG_VFIO_PCI_DMABUF"] == "n"
    assert no_dmabuf.built_from == "dmabuf" and not no_dmabuf.has_dmabuf


def test_built_from_an_unknown_variant_is_bad_input(recipe_dir):
    path = recipe_dir / "recipe.toml"
    path.write_text(path.read_text().replace('no-dmabuf = "dmabuf"', 'no-dmabuf = "nope"'))
    with pytest.raises(BadInput, match="built from 'nope'"):
        Recipe.load(recipe_dir)


def test_each_architecture_has_its_own_keys_and_fragments(recipe_dir):
    x86, arm = Recipe.load(recipe_dir), Recipe.load(recipe_dir, AARCH64)
    for name in x86.kernels:
        assert x86.kernels[name].key() != arm.kernels[name].key()
    assert x86.rootfs.base_key() != arm.rootfs.base_key()
    names = {p.name for p in arm.kernels["dmabuf"].required}
    assert {"guest.config", "vfio.config", "aarch64.config", "dmabuf.config"} == names
    assert [p.name for p in x86.kernels["dmabuf"].choices] == ["choices.config",
                                                               "choices-x86_64.config"]
    assert [p.name for p in arm.kernels["dmabuf"].choices] == ["choices.config"]
    assert "ARCH=arm64" in arm.kernels["dmabuf"].make_args
    assert arm.rootfs.packages[0] == "qemu-system-arm"
    assert "qemu-system-x86" not in arm.rootfs.packages


def test_an_architecture_fragment_changes_only_that_architecture(recipe_dir):
    before = keys(recipe_dir)
    arm_before = Recipe.load(recipe_dir, AARCH64).kernels["dmabuf"].key()
    with (recipe_dir / "kernel/aarch64.config").open("a") as f:
        f.write("CONFIG_ARM_SMMU_V3_SVA=y\n")
    assert keys(recipe_dir) == before
    assert Recipe.load(recipe_dir, AARCH64).kernels["dmabuf"].key() != arm_before


def test_a_recipe_without_the_architecture_is_bad_input(recipe_dir):
    toml = recipe_dir / "recipe.toml"
    toml.write_text(toml.read_text().replace("[kernel.arch.aarch64]", "[kernel.arch.riscv64]"))
    with pytest.raises(BadInput, match=r"no \[kernel.arch.aarch64\] section"):
        Recipe.load(recipe_dir, AARCH64)


def test_a_variants_boot_arguments_rebuild_nothing(recipe_dir):
    """They are given at boot: a changed one boots the same build with other checks on."""
    before = keys(recipe_dir)
    toml = recipe_dir / "recipe.toml"
    toml.write_text(toml.read_text().replace("[kernel.boot_args]\ndebug = [",
                                             "[kernel.boot_args]\ndebug = [\"quiet\", "))
    assert keys(recipe_dir) == before
    kernels = Recipe.load(recipe_dir).kernels
    assert kernels["debug"].boot_args[0] == "quiet" and len(kernels["debug"].boot_args) > 1
    assert kernels["dmabuf"].boot_args == ()


@pytest.mark.parametrize("table", ["[kernel.boot_args]\ndebug", "series"])
def test_a_variant_the_recipe_names_that_is_not_one_is_bad_input(recipe_dir, table):
    toml = recipe_dir / "recipe.toml"
    text = toml.read_text()
    old = {"series": 'series = ["debug", "no-dmabuf"]'}.get(table, table)
    new = {"series": 'series = ["debg", "no-dmabuf"]'}.get(table, "[kernel.boot_args]\ndebg")
    assert old in text
    toml.write_text(text.replace(old, new))
    with pytest.raises(BadInput, match="names kernel variant 'debg', which is not one"):
        Recipe.load(recipe_dir)
