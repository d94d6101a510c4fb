"""The package index a foreign second stage reads: cut to what the first stage fetched."""

from harness.images import foreign

INDEX = """Package: libc6
Version: 2.43-7
Depends: libgcc-s1

Package: zsh
Version: 5.9-8

Package: libgcc-s1
Version: 16.1-1
Pre-Depends: libc6

"""


def _tree(tmp_path):
    (tmp_path / "debootstrap").mkdir()
    (tmp_path / "debootstrap" / "debpaths").write_text(
        "libc6 /var/cache/apt/archives/libc6_2.43-7_arm64.deb\n"
        "libgcc-s1 /var/cache/apt/archives/libgcc-s1_16.1-1_arm64.deb\n")
    lists = tmp_path / "var" / "lib" / "apt" / "lists"
    lists.mkdir(parents=True)
    index = lists / "deb.debian.org_debian_dists_sid_main_binary-arm64_Packages"
    index.write_text(INDEX)
    (lists / "deb.debian.org_debian_dists_sid_InRelease").write_text("Origin: Debian\n")
    return index


def test_only_the_fetched_packages_stanzas_stay_whole(tmp_path):
    index = _tree(tmp_path)
    foreign.trim_index(tmp_path)
    stanzas = [s for s in index.read_text().split("\n\n") if s.strip()]
    assert stanzas == ["Package: libc6\nVersion: 2.43-7\nDepends: libgcc-s1",
                       "Package: libgcc-s1\nVersion: 16.1-1\nPre-Depends: libc6"]


def test_other_lists_are_left_alone_and_a_second_cut_changes_nothing(tmp_path):
    index = _tree(tmp_path)
    foreign.trim_index(tmp_path)
    once = index.read_text()
    foreign.trim_index(tmp_path)
    assert index.read_text() == once
    release = index.parent / "deb.debian.org_debian_dists_sid_InRelease"
    assert release.read_text() == "Origin: Debian\n"
