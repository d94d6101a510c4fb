"""A kernel object tree copied to build a series in, pointed at its new places."""

import os
import shutil
import subprocess
from pathlib import Path

from harness.images.shell import shell


def copy_object_tree(base: Path, obj: Path, moves: dict[Path, Path]) -> None:
    tmp = obj.with_name(obj.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    # --reflink=auto: where the filesystem shares extents (btrfs, XFS) the copy is free;
    # on ext4 it is a copy (hard links are no way out: kbuild rewrites .cmd files in place)
    shell(f"cp -a --reflink=auto '{base}' '{tmp}'", "copy the object tree")
    _repoint(tmp, {**moves, base: obj})
    tmp.rename(obj)


#: Object subtrees whose builds change into the source tree (make -C): there a path is
#: the physical one (make's CURDIR), through any symlink of a linked source tree.
PHYSICAL = ("tools",)


def _repoint(obj: Path, moves: dict[Path, Path]) -> None:
    """Kbuild records the source tree's absolute path in its .cmd files (commands and
    dependencies), and the tools build (objtool, on which every object depends) its
    output directory's: point a copied object tree at its new places, or make rebuilds
    it all, and would miss the headers a series changes. Where a source tree is linked
    (linked_tree) and the tools build reaches its sources through a symlink, their
    physical path is the pristine one: those records keep it."""
    for old, new in moves.items():
        found = subprocess.run(["grep", "-rlIZ", "--", str(old), str(obj)],
                               capture_output=True, timeout=300).stdout.split(b"\0")
        for path in (Path(p.decode()) for p in found if p):
            sub = path.relative_to(obj).parts[0]
            if sub in PHYSICAL and (new / sub).is_symlink() and \
                    (new / sub).resolve() == (old / sub).resolve():
                continue
            path.write_text(path.read_text().replace(str(old), str(new)))
    source = obj / "source"
    if source.is_symlink():
        target = Path(os.readlink(source))
        source.unlink()
        source.symlink_to(moves.get(target, target))
