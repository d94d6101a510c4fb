"""A patch series under test: read as git reads mail, applied as git applies patches.

A series comes as an mbox (what `git format-patch --stdout` or `b4 am` write)
or a directory of patch files (`git format-patch -o DIR`). It is split with
`git mailsplit`, each message read with `git mailinfo` (its subject, author and
diff) and applied in order with `git apply`: git's own tools, no patch parser
of ours. A cover letter (a message without a diff) is kept as the series'
title. A patch that does not apply stops everything with a message naming the
patch and git's own words about the file and line.
"""

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from harness.base.errors import BadInput

STAGE = "series"
#: A declaration in a trace-events file: `name(args) "format"`, maybe after a property.
_TRACE_EVENT = re.compile(r"^\s*(?:[a-z-]+\s+)*([a-z_][a-z0-9_]*)\(")


@dataclass(frozen=True)
class Patch:
    number: int
    subject: str
    author: str
    diff: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.diff.encode()).hexdigest()

    def files(self) -> list[str]:
        """The paths the patch touches, as `git apply --numstat` reads them."""
        proc = subprocess.run(["git", "apply", "--numstat", "-"], input=self.diff,
                              capture_output=True, text=True, timeout=60)
        return sorted(line.split("\t", 2)[2] for line in proc.stdout.splitlines()
                      if line.count("\t") >= 2)


@dataclass(frozen=True)
class Series:
    source: Path
    title: str
    patches: tuple[Patch, ...]
    of: int | None = None  # a prefix (the first len(patches) patches) of a series this long

    def prefix(self, k: int) -> "Series":
        """The series' first `k` patches: what a bisect step builds. Its own name and key
        (a kernel built from it is cached as any series' is)."""
        if not 0 <= k <= len(self.patches):
            raise ValueError(f"no prefix of {k} patches in a series of {len(self.patches)}")
        total = self.of or len(self.patches)
        return Series(self.source, self.title, self.patches[:k], None if k == total else total)

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for p in self.patches:
            h.update(p.sha256.encode())
        return h.hexdigest()

    @property
    def name(self) -> str:
        return f"series-{self.sha256[:12]}"

    def files(self) -> list[str]:
        return sorted({f for p in self.patches for f in p.files()})

    def trace_events(self) -> list[str]:
        """Trace events the series adds or changes in a `trace-events` file (QEMU's way of
        declaring them): the lines it adds there, by event name."""
        names = set()
        for p in self.patches:
            in_trace_events = False
            for line in p.diff.splitlines():
                if line.startswith("diff --git "):
                    in_trace_events = line.rsplit("/", 1)[-1] == "trace-events"
                elif in_trace_events and line.startswith("+") and not line.startswith("+++"):
                    m = _TRACE_EVENT.match(line[1:])
                    if m:
                        names.add(m.group(1))
        return sorted(names)

    def record(self) -> dict:
        return {"source": str(self.source), "title": self.title, "sha256": self.sha256,
                **({"first": len(self.patches), "of": self.of} if self.of else {}),
                "files": self.files(), "trace_events": self.trace_events(),
                "patches": [{"number": p.number, "subject": p.subject, "author": p.author,
                             "sha256": p.sha256, "files": p.files()} for p in self.patches]}

    @classmethod
    def load(cls, path: Path) -> "Series":
        path = path.resolve()
        if not path.exists():
            raise BadInput(f"series {path} does not exist", stage=STAGE)
        # A directory of patches as `git format-patch -o` writes it; hidden files (.keep,
        # an editor's swap file) are not patches.
        messages = sorted(p for p in path.iterdir() if not p.name.startswith(".")) \
            if path.is_dir() else [path]
        if not messages:
            raise BadInput(f"series directory {path} is empty", stage=STAGE)
        patches: list[Patch] = []
        title = ""
        with tempfile.TemporaryDirectory(prefix="vfio-harness-series-") as tmp:
            for n, message in enumerate(messages):
                parts = Path(tmp) / f"m{n}"
                parts.mkdir()
                _git(["mailsplit", "-o" + str(parts), str(message)], f"git mailsplit {message}")
                for part in sorted(parts.iterdir()):
                    subject, author, diff = _mailinfo(part, Path(tmp))
                    if diff.strip():
                        patches.append(Patch(len(patches) + 1, subject, author, diff))
                    elif not title:
                        title = subject  # a cover letter
        if not patches:
            raise BadInput(f"{path} holds no patch: not an mbox or patch directory that git "
                           f"mailsplit/mailinfo can read (a broken mbox?)", stage=STAGE)
        return cls(path, title or patches[0].subject, tuple(patches))

    def apply(self, tree: Path) -> None:
        """Apply every patch to `tree`, in order."""
        self.own_files(tree)
        self.move(tree, 0, len(self.patches))

    def own_files(self, tree: Path) -> None:
        """Make the files the series touches the tree's own: the tree may share unchanged
        files with others by hard link, and git apply writes in place."""
        for rel in self.files():
            target = tree / rel
            if target.is_file() and target.stat().st_nlink > 1:
                shutil.copy2(target, target.with_name(target.name + ".vfio-harness-copy"))
                os.replace(target.with_name(target.name + ".vfio-harness-copy"), target)

    def move(self, tree: Path, applied: int, wanted: int) -> None:
        """Take `tree` from the first `applied` patches to the first `wanted`: forward by
        applying, back by reverting in reverse order. Only the files of the patches in
        between are rewritten, so make rebuilds only what they touch (a bisect step
        starts from the previous step's tree, as in a git bisect work tree)."""
        steps = [(p, False) for p in self.patches[applied:wanted]] if wanted >= applied else \
            [(p, True) for p in reversed(self.patches[wanted:applied])]
        for p, reverse in steps:
            proc = subprocess.run(["git", "apply", "--verbose", *(["-R"] * reverse), "-"],
                                  input=p.diff, cwd=tree, capture_output=True, text=True,
                                  timeout=300, env={**os.environ, "GIT_CEILING_DIRECTORIES":
                                                    str(tree.parent)})
            if proc.returncode != 0:
                how = "cannot be reverted in" if reverse else "does not apply to"
                raise BadInput(f"patch {p.number}/{self.of or len(self.patches)} "
                               f"\"{p.subject}\" of {self.source} {how} the kernel source: "
                               f"{_first_error(proc.stderr)}", stage=STAGE,
                               details=proc.stderr[-2000:])


def _first_error(stderr: str) -> str:
    """git's own words naming the file (and line) that did not apply."""
    errors = [line[len("error:"):].strip() for line in stderr.splitlines()
              if line.startswith("error:")]
    for wanted in ("patch failed:", "does not apply", "No such file", "already exists"):
        for e in errors:
            if wanted in e:
                return e
    return errors[0] if errors else (stderr.strip().splitlines() or ["git apply failed"])[-1]


def _mailinfo(message: Path, tmp: Path) -> tuple[str, str, str]:
    msg, patch = tmp / "msg", tmp / "patch"
    with message.open("rb") as f:
        proc = subprocess.run(["git", "mailinfo", str(msg), str(patch)], stdin=f,
                              capture_output=True, timeout=60)
    if proc.returncode != 0:
        raise BadInput(f"git mailinfo cannot read {message.name} of the series",
                       stage=STAGE, details=proc.stderr.decode(errors="replace"))
    info = dict(line.split(": ", 1) for line in proc.stdout.decode(errors="replace").splitlines()
                if ": " in line)
    return info.get("Subject", "(no subject)"), info.get("Author", ""), \
        patch.read_text(errors="replace")


def _git(args: list[str], what: str) -> None:
    """A git command whose failure means the input is not what git reads: bad input."""
    if not shutil.which("git"):
        raise BadInput("git is not installed: series are read and applied with git "
                       "(apt-get install git)", stage=STAGE)
    proc = subprocess.run(["git", *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise BadInput(f"{what}: {proc.stderr.strip() or 'failed'} (not an mbox of patches?)",
                       stage=STAGE)
