"""A kernel source tree for a series that shares the pristine one: symlinks, as high as they go.

A series touches a handful of files of a tree of about 100,000. A full copy by
hard links (`cp -al`) costs 100,000 directory entries, and removing it costs
20 s on this machine's disk: unlinking a hard link writes the shared inode back.
Here a tree is linked at the highest level that the series leaves alone: each
directory on the way to a file it touches is a real directory, each file it
touches a copy of its own, and everything else one symlink to the pristine
entry (a few hundred entries in all). git apply writes only where the tree is
its own (it refuses a path beyond a symlink: the directories along every
touched path are real), kbuild reads through the symlinks, and make sees the
pristine files' times: the objects built from them stay up to date.
"""

import os
import shutil
from pathlib import Path


def link_tree(origin: Path, tree: Path, own: list[str]) -> int:
    """Make `tree` (absent) the tree `origin` is, its files `own` (paths relative to it,
    present or to be created) its own copies; everything else linked. Returns the number
    of entries made."""
    real = {Path(f).parents[i] for f in own for i in range(len(Path(f).parents) - 1)}
    own_files = {Path(f) for f in own}
    tree.mkdir(parents=True)
    made = 0
    todo = [(origin, tree, Path("."))]
    while todo:
        src, dst, rel = todo.pop()
        with os.scandir(src) as entries:
            for entry in entries:
                r = rel / entry.name
                target = dst / entry.name
                if r in real and entry.is_dir(follow_symlinks=True):
                    target.mkdir()
                    todo.append((Path(entry.path), target, r))
                elif r in own_files:
                    shutil.copy2(entry.path, target)  # follows a symlink: a file of its own
                else:
                    target.symlink_to(_resolved(Path(entry.path)))
                made += 1
    for d in sorted(real):  # the directories a new file of the series will need
        (tree / d).mkdir(parents=True, exist_ok=True)
    return made


def _resolved(path: Path) -> Path:
    """Where a link should point: the pristine entry itself, not another tree's link to
    it (a tree linked from a linked tree does not depend on that tree)."""
    return path.resolve() if path.is_symlink() else path
