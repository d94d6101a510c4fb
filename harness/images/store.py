"""The L1 images: two kernel variants and a Debian sid rootfs, built into the cache.

Layout of the cache (see paths.py for where it is):
  downloads/           the pinned linux-source .deb
  src/<pkg>_<ver>/     its extracted tree, shared by both variants
  build/kernel-<v>/    the O= object tree of each variant, kept for incremental rebuilds
  build/rootfs-base-<key>/  the debootstrap result, kept so a changed init script
                            does not debootstrap again
  artifacts/<name>-<key>/   what runs: bzImage, rootfs.qcow2, keys, manifest.json
  build/<arch>/, artifacts/<arch>-<name>-<key>/  the same for a platform other than
                            x86_64 (the kernel source is shared: the same pinned tree)

An artifact directory is complete only when its manifest exists: it is built
as `<dir>.partial` and renamed, so an interrupted build is never mistaken for a
finished one, and the manifest's sha256 catch an artifact corrupted since.
"""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness.base.checksum import sha256_file
from harness.base.deadline import Deadline, wait_for
from harness.base.errors import BadInput, HarnessError, StageTimeout
from harness.base.progress import say, step
from harness.images import cache_book, foreign, kconfig
from harness.images.build_step import compile_progress as _compile_progress
from harness.images.build_step import last_line as _last_line
from harness.images.build_step import run as _run
from harness.images.cache_lock import LOCKS, ArtifactLocks
from harness.images.debian import PrivateApt, file_record, installed_version
from harness.images.linked_tree import link_tree
from harness.images.object_tree import copy_object_tree
from harness.images.recipe import KernelVariant, Recipe, Rootfs
from harness.images.series import Series
from harness.images.shell import shell
from harness.platforms import PLATFORMS, X86_64, Platform

MANIFEST = "manifest.json"
#: In a kernel source the recipe's patches were applied to (and its series copies).
RECIPE_PATCHES = ".vfio-harness-recipe-patches"
#: In a bisect work tree: how many of its series' patches it has applied, and the tree it
#: was linked from.
BISECT_APPLIED, BISECT_ORIGIN = ".vfio-harness-applied", ".vfio-harness-origin"
#: Rough peak use of a full build: kernel source, two object trees, rootfs and its image.
NEEDED_FREE_GIB = 8
#: A series' kernel: an object tree copied from its variant's (about 0.46 GB), a source
#: overlay and the kernel, with room to spare.
SERIES_NEEDS_GIB = 1.5
#: Host tools the build runs, and the Debian package that has each.
BUILD_TOOLS = {
    "make": "make", "gcc": "gcc", "flex": "flex", "bison": "bison", "bc": "bc",
    "dpkg-deb": "dpkg", "xz": "xz-utils", "debootstrap": "debootstrap",
    "mkfs.ext4": "e2fsprogs", "qemu-img": "qemu-utils", "ssh-keygen": "openssh-client",
    "patch": "patch",
}
BUILD_HEADERS = {"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"}


@dataclass(frozen=True)
class KernelImage:
    variant: str
    directory: Path
    manifest: dict
    #: The recipe's boot arguments for its variant (the debug kernel's checks that are
    #: switched on at boot).
    boot_args: tuple[str, ...] = ()

    @property
    def bzimage(self) -> Path:
        """The kernel image L0 boots (bzImage on x86_64), whatever the platform calls it."""
        return self.directory / self.manifest.get("image", X86_64.kernel_image)


@dataclass(frozen=True)
class RootfsImage:
    directory: Path
    manifest: dict

    @property
    def qcow2(self) -> Path:
        return self.directory / "rootfs.qcow2"

    @property
    def client_key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def host_key_pub(self) -> Path:
        return self.directory / "ssh_host_ed25519_key.pub"

    @property
    def qemu_version(self) -> str:
        return self.manifest["versions"][self.manifest.get("qemu_package", X86_64.l2_package)]

    @property
    def qemu_binary(self) -> dict | None:
        """The packaged QEMU under test as built into the image (None: an older image)."""
        return self.manifest.get("qemu_binary")


@dataclass(frozen=True)
class Images:
    kernels: dict[str, KernelImage]
    rootfs: RootfsImage
    platform: Platform = X86_64  # what they were built for: L0 boots them as that


@dataclass(frozen=True)
class ArtifactState:
    name: str
    key: str
    directory: Path
    problem: str | None  # None when complete and intact

    @property
    def ok(self) -> bool:
        return self.problem is None


class ImageStore:
    """Knows the cache layout, verifies artifacts and builds what is missing."""

    def __init__(self, recipe: Recipe, cache: Path, jobs: int | None = None,
                 budget: int | None = None):
        self.recipe = recipe
        #: Bytes the cache may hold, kept after each build (None: no budget kept)
        self.budget = budget
        self.platform = recipe.platform
        self.cache = cache
        #: One compiler per core: on this 2-core machine -j3 compiled the x86 kernel in
        #: 356 and 357 s, -j2 in 319 and 342 s: a third compiler only makes two cores share.
        self.jobs = jobs or os.cpu_count() or 1
        self.artifacts = cache / "artifacts"
        self.locks = ArtifactLocks(self.artifacts)
        tag = self.platform.tag
        self.build_dir = cache / "build" / tag.rstrip("-") if tag else cache / "build"
        #: Set once this build has no more kernels to make: a foreign rootfs waits for it.
        self._kernels_done = threading.Event()

    # -- where things are, and whether they are sound ---------------------------

    def kernel_dir(self, variant: KernelVariant) -> Path:
        return self.artifacts / f"kernel-{self.platform.tag}{variant.name}-{variant.key()}"

    def rootfs_dir(self) -> Path:
        return self.artifacts / f"rootfs-{self.platform.tag}{self.recipe.rootfs.key()}"

    def current(self) -> set[Path]:
        """The artifact directories the recipe points at now (built or not; nothing hashed)."""
        return {*(self.kernel_dir(v) for v in self.recipe.kernels.values()), self.rootfs_dir()}

    def states(self) -> list[ArtifactState]:
        out = [ArtifactState(f"kernel-{v.name}", v.key(), self.kernel_dir(v),
                             verify(self.kernel_dir(v)))
               for v in self.recipe.kernels.values()]
        out.append(ArtifactState("rootfs", self.recipe.rootfs.key(), self.rootfs_dir(),
                                 verify(self.rootfs_dir())))
        return out

    def everyones_images(self) -> set[Path]:
        """The artifact directories every platform's recipe points at now."""
        return {d for p in PLATFORMS.values()
                for d in ImageStore(Recipe.load(self.recipe.directory, p), self.cache).current()}

    def keep_budget(self) -> None:
        """After a build: the cache back within its budget, least recently used first."""
        if self.budget is not None:
            cache_book.keep_within(self.cache, self.everyones_images(), self.budget)

    def stale(self) -> list[Path]:
        """Artifact dirs no current recipe key points at, for any platform, and leftovers
        of interrupted builds."""
        current = self.everyones_images()
        if not self.artifacts.is_dir():
            return []
        return sorted(p for p in self.artifacts.iterdir()
                      if p not in current and p.name != LOCKS)

    def load(self, variants: list[str] | None = None) -> Images:
        """The built images, or an error saying how to build them."""
        wanted = self._variants(variants)
        bad = [s for s in self.states()
               if s.problem and (s.name == "rootfs" or s.name[len("kernel-"):] in wanted)]
        if bad:
            raise HarnessError(
                "images are not built: " + "; ".join(f"{s.name}: {s.problem}" for s in bad),
                stage="images", details="run: vfio-harness images build")
        return Images(kernels={n: self._kernel_image(n, self.kernel_dir(self.recipe.kernels[n]))
                               for n in wanted},
                      rootfs=self._rootfs_image(), platform=self.platform)

    def _kernel_image(self, role: str, directory: Path) -> KernelImage:
        """An artifact this process boots from: held (shared) until it exits."""
        self.locks.hold_shared(directory)
        variant = self.recipe.kernels.get(role)
        return KernelImage(role, directory, _read_manifest(directory),
                           variant.boot_args if variant else ())

    def _rootfs_image(self) -> RootfsImage:
        self.locks.hold_shared(self.rootfs_dir())
        return RootfsImage(self.rootfs_dir(), _read_manifest(self.rootfs_dir()))

    def _claimed(self, final: Path, force: bool, build: Callable[[], None]) -> None:
        """Build `final` holding its exclusive lock: a second builder waits, then finds it
        built and uses it; a rebuild waits for the processes that boot from it."""
        with self.locks.exclusive(final):
            if not force and verify(final) is None:
                say(f"{final.name}: built meanwhile by another process: using it")
                return
            build()

    def _variants(self, variants: list[str] | None) -> list[str]:
        names = variants or list(self.recipe.matrix_kernels)
        unknown = [n for n in names if n not in self.recipe.kernels]
        if unknown:
            raise BadInput(f"unknown kernel variant {unknown[0]!r}; the recipe has "
                           f"{', '.join(self.recipe.kernels)}")
        return names

    # -- building ---------------------------------------------------------------

    def build(self, variants: list[str] | None = None, force: bool = False,
              kernels: bool = True) -> Images:
        """Build whatever is missing, stale or corrupt; a no-op when all is intact.
        `kernels=False`: only the rootfs (the kernel comes from elsewhere)."""
        wanted = self._variants(variants)
        states = {s.name: s for s in self.states()}  # hashes every artifact once
        todo_kernels = [self.recipe.kernels[n] for n in wanted
                        if kernels and (force or states[f"kernel-{n}"].problem)]
        todo_rootfs = force or states["rootfs"].problem is not None
        for s in states.values():
            if s.problem and s.directory.exists():
                say(f"{s.name}: {s.problem}: rebuilding")
        if todo_kernels or todo_rootfs:
            self._preflight(bool(todo_kernels), todo_rootfs)
        # debootstrap waits on the network and the disk, the compiler on the CPU:
        # running them side by side takes minutes off a build from scratch.
        errors: list[BaseException] = []
        rootfs_thread = None
        if todo_rootfs:
            rootfs_thread = threading.Thread(
                target=_capture(errors, lambda: self._claimed(
                    self.rootfs_dir(), force, lambda: self._build_rootfs(self.recipe.rootfs))),
                name="rootfs")
            rootfs_thread.start()
        # A variant built from another's object tree comes after that one.
        todo_kernels.sort(key=lambda v: v.built_from is not None)
        if any(s.ok for name, s in states.items() if name.startswith("kernel-")):
            self._kernels_done.set()  # a foreign second stage can boot one at once
        try:
            for variant in todo_kernels:
                self._claimed(self.kernel_dir(variant), force,
                              functools.partial(self._build_variant, variant))
                self._kernels_done.set()  # one is enough to boot a foreign second stage
        finally:
            self._kernels_done.set()
            if rootfs_thread:
                rootfs_thread.join()
        if errors:
            raise errors[0]
        images = self.load(wanted) if kernels else Images({}, self._rootfs_image(), self.platform)
        if todo_kernels or todo_rootfs:
            self.keep_budget()  # after load: what this process boots is held, never evicted
        return images

    def _preflight(self, kernels: bool, rootfs: bool) -> None:
        missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in BUILD_TOOLS.items()
                   if not shutil.which(tool)]
        compiler = self.platform.missing_compiler()
        if kernels and compiler:
            missing.append(compiler)
        if kernels:
            missing += [f"{h} (apt-get install {pkg})" for h, pkg in BUILD_HEADERS.items()
                        if not Path(h).exists()]
        if missing:
            raise BadInput("the image build needs: " + ", ".join(missing), stage="image build")
        if rootfs and os.geteuid() != 0:
            raise BadInput("debootstrap needs root to build the rootfs", stage="image build")
        self._room(NEEDED_FREE_GIB, "the image build")

    def _room(self, needs_gib: float, what: str) -> None:
        """Refuse a build the disk cannot hold before it writes anything: a build that
        dies half-way through a write leaves nothing usable, and says so too late."""
        self.cache.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.cache).free / 2**30
        if free < needs_gib and cache_book.being_deleted(self.cache):
            # an eviction's trash is still being deleted: the room it frees is coming
            wait_for(lambda: not cache_book.being_deleted(self.cache) or shutil.disk_usage(
                self.cache).free / 2**30 >= needs_gib,
                Deadline("image build: evicted trees being deleted", 300),
                "the trash of an eviction is still being deleted", interval=1.0)
            free = shutil.disk_usage(self.cache).free / 2**30
        if free < needs_gib:
            raise BadInput(f"no room for {what}: {free:.1f} GiB free where the cache is "
                           f"({self.cache}), it needs about {needs_gib:g} GiB; make room with "
                           f"`vfio-harness images prune --max-size SIZE` (or put the cache "
                           f"elsewhere: --cache-dir, VFIO_HARNESS_CACHE)", stage="image build")

    def kernel_source(self, variant: KernelVariant) -> Path:
        """Where the variant's pinned source is (with the recipe's patches), built or not."""
        return self.cache / "src" / f"{variant.package}_{variant.version}{variant.patches_tag()}"

    def _kernel_source(self, variant: KernelVariant) -> Path:
        src = self.kernel_source(variant)
        if (src / ".complete").exists():
            return src
        apt = PrivateApt(self.cache / "apt", self.recipe.mirror, self.recipe.suite)
        with step(f"kernel source: download {variant.package} {variant.version}"):
            deb = apt.download(variant.package, variant.version, variant.sha256,
                               self.cache / "downloads")
        with step(f"kernel source: extract {deb.name}"):
            tmp = src.with_name(src.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            shell(f"dpkg-deb --fsys-tarfile '{deb}' | tar -xO './{variant.tarball}' "
                  f"| tar -xJ -C '{tmp}' --strip-components=1", "extract kernel source")
            for patch in variant.patches:
                shell(f"patch -p1 --batch --forward -d '{tmp}' < '{patch}'",
                      f"apply the recipe's {patch.name}")
            if variant.patches:
                (tmp / RECIPE_PATCHES).write_text(
                    "".join(f"{p.name}\n" for p in variant.patches))
            (tmp / ".complete").write_text(variant.sha256 + "\n")
            shutil.rmtree(src, ignore_errors=True)
            tmp.rename(src)
        return src

    def _build_variant(self, variant: KernelVariant) -> None:
        """A recipe variant: from scratch, or from the object tree of the variant it is
        built from (copied, once that one is built and published), so that make compiles
        only what their configs make different."""
        obj = self.build_dir / f"kernel-{variant.name}"
        # Its own tree, configured from other fragments (the recipe changed since), would
        # recompile nearly every file; the base's, one symbol away, only what reads it.
        stale = obj.exists() and _configured_key(obj) != variant.key()
        if variant.built_from and (stale or not obj.exists()):
            base_variant = self.recipe.kernels[variant.built_from]
            base = self.build_dir / f"kernel-{base_variant.name}"
            if _built(base, self.kernel_dir(base_variant), self.platform):
                why = " (its own was configured by another recipe)" if stale else ""
                with step(f"kernel {variant.name}: start from {base_variant.name}'s object "
                          f"tree{why}"):
                    if stale:
                        shutil.rmtree(obj)
                    copy_object_tree(base, obj, {base: obj})
        self._build_kernel(variant)

    def _build_kernel(self, variant: KernelVariant, src: Path | None = None,
                      obj: Path | None = None, name: str | None = None,
                      final: Path | None = None, key: str | None = None,
                      extra: dict | None = None, configured: bool = False) -> None:
        """Configure and compile `variant` (from `src` into `obj`, published as `final`,
        for a series build; else the variant itself). `configured`: `obj` holds the
        variant's .config and nothing that decides it changed (a bisect step whose series
        touches no Kconfig file): the three configure steps are skipped."""
        began = time.monotonic()
        src = src or self._kernel_source(variant)
        name = name or variant.name
        obj = obj or self.build_dir / f"kernel-{name}"
        obj.mkdir(parents=True, exist_ok=True)
        log = self.build_dir / f"kernel-{name}.log"
        stage = f"image build: kernel {name}"
        unchecked = variant.unchecked if (src / RECIPE_PATCHES).exists() else ()
        if variant.unchecked and not unchecked:
            say(f"kernel {name}: {src} lacks the recipe's patches: built without "
                f"{', '.join(p.name for p in variant.unchecked)}")
        if configured and (obj / ".config").is_file():
            log.write_text(f"# configured as before: {obj / '.config'}\n")
        else:
            self._configure(variant, src, obj, name, log, stage, unchecked)
        with step(f"kernel {name}: compile with -j{self.jobs} (log {log})"):
            with log.open("a") as out:
                _run(["make", "-C", str(src), f"O={obj}", *variant.make_args, f"-j{self.jobs}",
                      self.platform.kernel_target], out,
                     stage, progress=lambda: _compile_progress(log, name))

        def fill(d: Path) -> dict:
            shutil.copy2(obj / self.platform.kernel_built, d / self.platform.kernel_image)
            shutil.copy2(obj / ".config", d / "config")
            release = (obj / "include/config/kernel.release").read_text().strip()
            return {"versions": {"kernel": release, variant.package: variant.version},
                    "arch": self.platform.arch, "image": self.platform.kernel_image,
                    **(extra or {})}

        _publish(final or self.kernel_dir(variant), f"kernel-{name}", key or variant.key(),
                 began, fill)

    def _configure(self, variant: KernelVariant, src: Path, obj: Path, name: str, log: Path,
                   stage: str, unchecked: tuple) -> None:
        """allnoconfig with the fragments as KCONFIG_ALLCONFIG: an option no fragment asks
        for, and that none needs, is off (merged onto defconfig or after allnoconfig, an
        option the fragments make visible would take its default: IPv6 came with NET)."""
        with step(f"kernel {name}: configure (log {log})"):
            wanted = obj / "fragments.config"
            with log.open("w") as out:
                _run([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(obj),
                      *map(str, variant.choices), *map(str, variant.required),
                      *map(str, unchecked)], out, stage)
                (obj / ".config").rename(wanted)
                _run(["make", "-C", str(src), f"O={obj}", *variant.make_args,
                      f"KCONFIG_ALLCONFIG={wanted}", "allnoconfig"], out, stage)
            kconfig.check(variant.required_options(), kconfig.parse((obj / ".config").read_text()),
                          name)
            (obj / CONFIGURED_KEY).write_text(variant.key() + "\n")

    # -- a kernel image brought by the user ------------------------------------------

    def user_kernel(self, bzimage: Path, config: Path | None = None,
                    role: str | None = None) -> tuple[str, KernelImage]:
        """(role, image) of a kernel built elsewhere, booted as is: its config (given, or
        the one embedded with IKCONFIG) must have what the role's scenarios need."""
        stage = "kernel image"
        if not bzimage.is_file():
            raise BadInput(f"kernel image {bzimage} does not exist", stage=stage)
        if config is not None and not config.is_file():
            raise BadInput(f"kernel config {config} does not exist", stage=stage)
        at, magic = self.platform.kernel_magic
        with bzimage.open("rb") as f:
            f.seek(at)
            if f.read(len(magic)) != magic:
                raise BadInput(f"{bzimage} is not a {self.platform.arch} kernel image (no "
                               f"{magic.decode()!r} boot header at {at:#x}): give the "
                               f"{self.platform.kernel_image} the build made "
                               f"({self.platform.kernel_built})", stage=stage)
        text = config.read_text(errors="replace") if config else self._ikconfig(bzimage)
        try:
            final = kconfig.parse(text)
        except HarnessError as e:
            raise BadInput(f"the config of {bzimage} is not a kernel .config: {e.message}",
                           stage=stage) from None
        if role is None:
            role = "dmabuf" if final.get("CONFIG_VFIO_PCI_DMABUF") == "y" else "no-dmabuf"
        variant = self.recipe.kernels.get(role)
        if variant is None:
            raise BadInput(f"unknown kernel variant {role!r}; the recipe has "
                           f"{', '.join(self.recipe.kernels)}", stage=stage)
        missing = kconfig.lacking(variant.required_options(), final)
        if missing:
            raise BadInput(f"the kernel image {bzimage} lacks what the {role!r} scenarios need: "
                           + ", ".join(missing), stage=stage)
        sha = sha256_file(bzimage)
        final_dir = self.artifacts / f"kernel-image-{sha[:16]}"
        if verify(final_dir):
            def fill(d: Path) -> dict:
                shutil.copy2(bzimage, d / self.platform.kernel_image)
                (d / "config").write_text(text)
                return {"versions": {"kernel": kernel_version(bzimage) or "unknown"},
                        "arch": self.platform.arch, "image": self.platform.kernel_image,
                        "kernel_image": {"path": str(bzimage.resolve()), "sha256": sha,
                                         "config": str(config.resolve()) if config else
                                         "embedded (IKCONFIG)"}}
            self._claimed(final_dir, False, lambda: _publish(
                final_dir, f"kernel-image-{sha[:16]}", sha[:16], time.monotonic(), fill))
        return role, self._kernel_image(role, final_dir)

    def _ikconfig(self, bzimage: Path) -> str:
        variant = next(iter(self.recipe.kernels.values()))
        script = self._kernel_source(variant) / "scripts" / "extract-ikconfig"
        proc = subprocess.run([str(script), str(bzimage)], capture_output=True, text=True,
                              timeout=120)
        if proc.returncode != 0 or "CONFIG_" not in proc.stdout:
            raise BadInput(f"the kernel image {bzimage} has no embedded config "
                           f"(CONFIG_IKCONFIG): give its .config with --kernel-config",
                           stage="kernel image")
        return proc.stdout

    # -- a kernel tree of the user's ------------------------------------------------

    def build_tree(self, tree: Path, variants: list[str] | None = None) -> Images:
        """The images with each kernel variant built from the user's `tree`, out of tree
        (O=, in the cache) with the variant's fragments; make decides what to rebuild."""
        tree = tree.resolve()
        if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
            raise BadInput(f"{tree} is not a kernel source tree (no Makefile and Kconfig)",
                           stage="kernel tree")
        images = self.build(variants, kernels=False)
        tag = f"tree-{hashlib.sha256(str(tree).encode()).hexdigest()[:12]}"
        kernels = {}
        for name in self._variants(variants):
            variant = self.recipe.kernels[name]
            final = self.artifacts / f"kernel-{self.platform.tag}{name}+{tag}"
            self._claimed(final, True, functools.partial(
                self._build_kernel, variant, tree, self.build_dir / f"kernel-{name}+{tag}",
                f"{name}+{tag}", final, f"{variant.key()}+{tag}",
                {"kernel_tree": {"path": str(tree), "head": _git_head(tree)}}))
            kernels[name] = self._kernel_image(name, final)
        return Images(kernels, images.rootfs, self.platform)

    # -- a kernel with a series applied ---------------------------------------------

    def series_key(self, variant: KernelVariant, series: Series) -> str:
        return hashlib.sha256(f"{variant.key()} {series.sha256}".encode()).hexdigest()[:16]

    def series_dir(self, variant: KernelVariant, series: Series) -> Path:
        return self.artifacts / (f"kernel-{self.platform.tag}{variant.name}+{series.name}-"
                                 f"{self.series_key(variant, series)}")

    def build_series(self, series: Series, images: Images) -> Images:
        """`images` (built, and verified by the caller) with each kernel variant replaced by
        its build with `series` applied to the pinned source; built incrementally from the
        variant's own object tree."""
        kernels, built = {}, False
        for name in images.kernels:
            variant = self.recipe.kernels[name]
            final = self.series_dir(variant, series)
            problem = verify(final)
            if problem:
                self._room(SERIES_NEEDS_GIB, f"kernel {name}+{series.name}")
                say(f"kernel {name}+{series.name}: {problem}: building "
                    f"\"{series.title}\" ({len(series.patches)} patch(es))")
                self._claimed(final, False, functools.partial(
                    self._build_series_kernel, variant, series, final))
                built = True
            kernels[name] = self._kernel_image(name, final)
        if built:
            self.keep_budget()
        return Images(kernels, images.rootfs, self.platform)

    def _build_series_kernel(self, variant: KernelVariant, series: Series, final: Path) -> None:
        with self.locks.exclusive(Path(series.name)):  # its trees: never pruned meanwhile
            self._build_series_trees(variant, series, final)

    def _build_series_trees(self, variant: KernelVariant, series: Series, final: Path) -> None:
        pristine = self._kernel_source(variant)
        src = self._series_source(pristine, series)
        name = f"{variant.name}+{series.name}"
        obj = self.build_dir / f"kernel-{name}"
        base = self.build_dir / f"kernel-{variant.name}"
        if not obj.exists() and _built(base, self.kernel_dir(variant), self.platform):
            _touch_own_files(series, src)
            with step(f"kernel {name}: start from {variant.name}'s object tree"):
                copy_object_tree(base, obj, {Path(os.readlink(base / "source")): src,
                                              base: obj})
        self._build_kernel(variant, src, obj, name, final, self.series_key(variant, series),
                           {"series": series.record(), "base_variant": variant.name})

    def _series_source(self, pristine: Path, series: Series) -> Path:
        """The pinned source with the series applied: linked to the pristine tree, but for
        the files the series touches (linked_tree)."""
        src = pristine.with_name(f"{pristine.name}+{series.name}")
        if (src / ".complete").exists():
            return src
        with step(f"{series.name}: apply {len(series.patches)} patch(es) to {pristine.name}"):
            tmp = src.with_name(src.name + ".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            link_tree(pristine, tmp, series.files())
            (tmp / ".complete").unlink(missing_ok=True)
            try:
                series.apply(tmp)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)  # a series that does not apply
                raise
            (tmp / ".complete").write_text(series.sha256 + "\n")
            shutil.rmtree(src, ignore_errors=True)
            tmp.rename(src)
        return src

    # -- a prefix of a series: one bisect step -----------------------------------------

    def build_prefix(self, series: Series, k: int, images: Images) -> Images:
        """`images` with each kernel variant built with the first `k` patches of `series`
        (k = 0: the pinned variants, whatever `images` holds). A kernel built from a prefix
        is cached as any series' is (a later bisect of the same series reuses it)."""
        if k == 0:  # verified when the run began, and held by this process since
            return Images({n: self._kernel_image(n, self.kernel_dir(self.recipe.kernels[n]))
                           for n in images.kernels}, images.rootfs, self.platform)
        prefix = series.prefix(k)
        kernels, built = {}, False
        for name in images.kernels:
            variant = self.recipe.kernels[name]
            final = self.series_dir(variant, prefix)
            if verify(final) is not None:
                self._room(SERIES_NEEDS_GIB, f"kernel {name}+{prefix.name}")
                self._claimed(final, False, functools.partial(
                    self._build_prefix_kernel, variant, series, k, final))
                built = True
            kernels[name] = self._kernel_image(name, final)
        if built:
            self.keep_budget()
        return Images(kernels, images.rootfs, self.platform)

    def _build_prefix_kernel(self, variant: KernelVariant, series: Series, k: int,
                             final: Path) -> None:
        """One work tree per (source, series), moved from step to step by applying or
        reverting the patches in between, and one object tree per variant built in it: a
        step recompiles what those patches touch, not what the whole prefix does (a series
        that touches include/linux/pci.h in its first patch would otherwise rebuild its
        users at every step). The work tree starts as the whole series' tree when that is
        built (the A/B's candidate): the first step then reverts half the series instead of
        applying the other half to a tree the series' headers have not touched."""
        pristine = self._kernel_source(variant)
        src = pristine.with_name(f"{pristine.name}+bisect-{series.name}")
        whole = pristine.with_name(f"{pristine.name}+{series.name}")
        whole_obj = self.build_dir / f"kernel-{variant.name}+{series.name}"
        prefix = series.prefix(k)
        with self.locks.exclusive(src):
            at = src / BISECT_APPLIED
            fresh = not at.exists()
            if fresh:  # new, or a move that failed half-way: start again
                from_whole = (whole / ".complete").exists() and _built(
                    whole_obj, self.series_dir(variant, series), self.platform)
                origin = whole if from_whole else pristine
                with step(f"{series.name}: a bisect work tree linked to {origin.name}"):
                    shutil.rmtree(src, ignore_errors=True)
                    for old in self.build_dir.glob(f"kernel-*+bisect-{series.name}"):
                        shutil.rmtree(old)  # built against the tree being replaced
                    link_tree(origin, src, series.files())  # copies keep their times:
                    series.own_files(src)  # the objects stay valid
                    (src / ".complete").unlink(missing_ok=True)
                    (src / BISECT_ORIGIN).write_text(f"{origin}\n")
                    at.write_text(f"{len(series.patches) if from_whole else 0}\n")
            applied = int(at.read_text())
            if applied != k:
                with step(f"{series.name}: from {applied} to {k} of {len(series.patches)} "
                          f"patches"):
                    at.unlink()
                    series.move(src, applied, k)
                    at.write_text(f"{k}\n")
            obj = self.build_dir / f"kernel-{variant.name}+bisect-{series.name}"
            if not obj.exists():
                self._start_prefix_objects(variant, series, src, obj, fresh)
            say(f"kernel {variant.name}+{prefix.name}: patches 1-{k} of "
                f"{len(series.patches)} of \"{series.title}\"")
            self._build_kernel(variant, src, obj, f"{variant.name}+{prefix.name}", final,
                               self.series_key(variant, prefix),
                               {"series": prefix.record(), "base_variant": variant.name},
                               configured=not any(Path(f).name.startswith("Kconfig")
                                                  for f in series.files()))

    def _start_prefix_objects(self, variant: KernelVariant, series: Series, src: Path,
                              obj: Path, fresh: bool) -> None:
        """The object tree a variant's bisect steps build in: the whole series' when the
        work tree was made from its source (their files' times agree), else the pinned
        kernel's with the series' files touched, so that make rebuilds each of them
        whatever the times say. A work tree kept from an earlier bisect (`fresh` false)
        was moved since, and the whole series' objects may have been rebuilt after: its
        files' times say nothing, so they are touched whichever tree it starts from."""
        whole_obj = self.build_dir / f"kernel-{variant.name}+{series.name}"
        origin = Path((src / BISECT_ORIGIN).read_text().strip())
        base = self.build_dir / f"kernel-{variant.name}"
        if (whole_obj / "source").is_symlink() and Path(os.readlink(whole_obj / "source")) \
                == origin and _built(whole_obj, self.series_dir(variant, series), self.platform):
            start = whole_obj
            if not fresh:
                _touch_own_files(series, src)
        elif _built(base, self.kernel_dir(variant), self.platform):
            start = base
            _touch_own_files(series, src)
        else:
            return  # built from nothing, as a first build is
        with step(f"kernel {variant.name}+bisect-{series.name}: start from {start.name}'s "
                  f"object tree"):
            copy_object_tree(start, obj, {Path(os.readlink(start / "source")): src,
                                           start: obj})

    def _build_rootfs(self, rootfs: Rootfs) -> None:
        began = time.monotonic()
        base = self.build_dir / f"rootfs-base-{rootfs.base_key()}"
        stage = "image build: rootfs"
        if not (base / ".complete").exists():
            log = self.build_dir / "rootfs-debootstrap.log"
            is_foreign = rootfs.debian_arch != foreign.host_arch()
            with step(f"rootfs: debootstrap {rootfs.suite} {rootfs.debian_arch} with "
                      f"{len(rootfs.packages)} packages{' (first stage)' * is_foreign} "
                      f"(log {log})"):
                shutil.rmtree(base, ignore_errors=True)
                base.parent.mkdir(parents=True, exist_ok=True)
                with log.open("w") as out:
                    _run(["debootstrap", "--variant=minbase", f"--arch={rootfs.debian_arch}",
                          *(["--foreign"] if is_foreign else []),
                          "--include=" + ",".join(rootfs.packages), rootfs.suite, str(base),
                          rootfs.mirror], out, stage,
                         progress=lambda: _last_line(log, "rootfs: debootstrap"))
            how = "debootstrap"
            if is_foreign:
                configured, how = foreign.second_stage(base, self.platform, self.build_dir,
                                                       _run, self._booting_kernel)
                if configured != base:
                    shutil.rmtree(base)
                    configured.rename(base)
            (base / ".complete").write_text(rootfs.base_key() + "\n")
            (base / ".configured-by").write_text(how + "\n")

        def fill(d: Path) -> dict:
            with step("rootfs: keys, init and sshd configuration"):
                _customize(base, rootfs, d)
            versions = {p: installed_version(base, p) or "not installed"
                        for p in (self.platform.l2_package, "openssh-server", "python3")}
            with step("rootfs: make the ext4 image"):
                used = int(subprocess.run(["du", "-sb", "--exclude=.complete", str(base)],
                                          capture_output=True, text=True, check=True,
                                          timeout=300).stdout.split()[0])
                size_mb = used // 2**20 * 5 // 4 + rootfs.headroom_mb
                raw = d / "rootfs.raw"
                with (self.build_dir / "rootfs-mkfs.log").open("w") as out:
                    _run(["mkfs.ext4", "-q", "-F", "-L", "l1root", "-d", str(base), str(raw),
                          f"{size_mb}M"], out, stage)
                    _run(["qemu-img", "convert", "-O", "qcow2", str(raw),
                          str(d / "rootfs.qcow2")], out, stage)
                raw.unlink()
                (d / "rootfs.qcow2").chmod(0o444)  # L0 boots it through a per-run overlay
            made = base / ".configured-by"
            return {"versions": versions, "suite": rootfs.suite, "packages": rootfs.packages,
                    "arch": rootfs.debian_arch, "qemu_package": rootfs.qemu_package,
                    "qemu_binary": file_record(base, f"/usr/bin/{self.platform.l2_qemu}"),
                    "configured_by": made.read_text().strip() if made.exists() else None}

        _publish(self.rootfs_dir(), "rootfs", rootfs.key(), began, fill)

    def _booting_kernel(self) -> Path:
        """A kernel of this platform to boot a foreign second stage with: the first variant
        built, as soon as there is one (the others compile meanwhile)."""
        if not self._kernels_done.wait(timeout=7200):
            raise StageTimeout("no kernel to boot the rootfs's second stage after 7200 s",
                               stage="image build: rootfs")
        for variant in self.recipe.kernels.values():
            if verify(self.kernel_dir(variant)) is None:
                return self._kernel_image(variant.name, self.kernel_dir(variant)).bzimage
        raise HarnessError(f"the {self.platform.arch} rootfs is configured by booting a "
                           f"kernel of its own, and none is built", stage="image build: rootfs",
                           details=f"run: vfio-harness images build --arch {self.platform.arch}")

    # -- cleaning ---------------------------------------------------------------

    def clean(self, everything: bool = False) -> list[Path]:
        """Stale artifacts, and the sources and object trees of series (each rebuilt from
        its variant's in seconds); or the whole cache."""
        rebuildable = [*self.build_dir.glob("kernel-*+series-*"),
                       *self.build_dir.glob("kernel-*+bisect-series-*"),
                       *(self.cache / "src").glob("*+series-*"),
                       *(self.cache / "src").glob("*+bisect-series-*")] \
            if self.cache.is_dir() else []
        if everything:
            artifacts = sorted(p for p in self.artifacts.glob("*") if p.name != LOCKS) \
                if self.artifacts.is_dir() else []
            held = [self.locks.try_exclusive(p) for p in artifacts]
            if any(h is None for h in held):
                busy = [p.name for p, h in zip(artifacts, held, strict=True) if h is None]
                raise BadInput(f"the cache is in use ({', '.join(busy)}): another vfio-harness "
                               f"process boots from it; clean it when that run is over",
                               stage="images clean")
            shutil.rmtree(self.cache, ignore_errors=True)
            return [self.cache]
        removed = []
        for path in self.stale() + sorted(rebuildable):
            if path.parent == self.artifacts:
                handle = self.locks.try_exclusive(path)
                if handle is None:
                    say(f"{path.name}: in use by another vfio-harness process: kept")
                    continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        return removed


def verify(directory: Path) -> str | None:
    """Why an artifact directory cannot be used, or None when it is complete and intact."""
    if not directory.is_dir():
        return "not built"
    try:
        manifest = _read_manifest(directory)
        files = {name: (int(meta["size"]), str(meta["sha256"]))
                 for name, meta in manifest["files"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return "no valid manifest (an interrupted build, or a damaged one)"
    for name, (size, sha) in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size or sha256_file(path) != sha:
            return f"{name} does not match its manifest (corrupted)"
    return None


def _git_head(tree: Path) -> str | None:
    """The commit a kernel tree is at, and whether it has changes, if it is a git tree."""
    head = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"],
                          capture_output=True, text=True, timeout=60)
    return head.stdout.strip() if head.returncode == 0 else None


def kernel_version(bzimage: Path) -> str | None:
    """The release a kernel image names: a bzImage in its setup header (boot protocol:
    kernel_version at 0x20e is an offset from 0x200 to a NUL-terminated string); an
    uncompressed image (arm64's Image) in its linux_banner, "Linux version X ..."."""
    data = bzimage.read_bytes()
    if len(data) >= 0x210 and data[0x202:0x206] == b"HdrS":
        start = int.from_bytes(data[0x20E:0x210], "little") + 0x200
        end = data.find(b"\0", start)
        return data[start:end].decode(errors="replace").split()[0] if 0 < start < end else None
    at = data.find(b"Linux version ")
    if at < 0:
        return None
    words = data[at:at + 200].split(b"\0")[0].decode(errors="replace").split()
    return words[2] if len(words) > 2 else None


def _touch_own_files(series: Series, src: Path) -> None:
    """Before a series' tree starts from its variant's object tree: the series' own files
    newer than any object, so that make recompiles each of them whatever the times say.
    A source tree outlives the variant's objects: after a recipe change rebuilt them, its
    patched files (written when the series was first applied) were older than the objects
    copied, and make built a "series" kernel without the series (CI: an off-by-one series
    judged 24 unchanged)."""
    for rel in series.files():
        if (src / rel).exists():
            os.utime(src / rel)


#: In an object tree: the key of the recipe variant its .config was made for.
CONFIGURED_KEY = ".vfio-harness-configured"


def _configured_key(obj: Path) -> str:
    try:
        return (obj / CONFIGURED_KEY).read_text().strip()
    except OSError:
        return ""


def _built(obj: Path, artifact: Path, platform: Platform) -> bool:
    """Whether the object tree is the one the published artifact came from (its kernel
    image is the artifact's): only then may a series build start from it."""
    image = obj / platform.kernel_built
    try:
        want = _read_manifest(artifact)["files"][platform.kernel_image]["sha256"]
    except (OSError, ValueError, KeyError):
        return False
    return image.is_file() and (obj / "source").is_symlink() and sha256_file(image) == want


def _read_manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def _publish(final: Path, name: str, key: str, began: float,
             fill: Callable[[Path], dict]) -> None:
    """Fill `<final>.partial`, write its manifest last, then rename it into place."""
    partial = final.with_name(final.name + ".partial")
    for old in (partial, final):
        shutil.rmtree(old, ignore_errors=True)
    partial.mkdir(parents=True)
    extra = fill(partial)
    files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(partial.iterdir()) if p.is_file()}
    manifest = {"name": name, "key": key,
                "built": datetime.now(UTC).isoformat(timespec="seconds"),
                "build_seconds": round(time.monotonic() - began, 1), "files": files, **extra}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    partial.rename(final)
    say(f"{name}: ready in {final}")


def _customize(base: Path, rootfs: Rootfs, artifact: Path) -> None:
    """Make the bootstrap an L1: our init, sshd set-up, a fresh host key and client key.

    Every path written here is overwritten on each build, so applying it again
    to a reused bootstrap gives the same tree.
    """
    shutil.copy2(rootfs.init, base / "sbin/harness-init")
    (base / "sbin/harness-init").chmod(0o755)
    shutil.copy2(rootfs.sshd_config, base / "etc/ssh/sshd_config.d/vfio-harness.conf")
    for old in (base / "etc/ssh").glob("ssh_host_*"):
        old.unlink()
    # The host key is made here and pinned by the client: no trust on first use.
    hostkey = artifact / "ssh_host_ed25519_key"
    clientkey = artifact / "id_ed25519"
    for key, comment in ((hostkey, "vfio-harness-l1"), (clientkey, "vfio-harness")):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                        "-f", str(key)], check=True, capture_output=True, timeout=60)
    shutil.move(hostkey, base / "etc/ssh/ssh_host_ed25519_key")
    (base / "etc/ssh/ssh_host_ed25519_key").chmod(0o600)
    shutil.copy2(artifact / "ssh_host_ed25519_key.pub", base / "etc/ssh/")
    ssh = base / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    shutil.copy2(artifact / "id_ed25519.pub", ssh / "authorized_keys")
    (ssh / "authorized_keys").chmod(0o600)
    (base / "etc/hostname").write_text("l1\n")
    (base / "etc/hosts").write_text("127.0.0.1 localhost\n10.0.2.15 l1\n")


def _capture(errors: list[BaseException], fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        try:
            fn()
        except BaseException as e:  # re-raised by the main thread
            errors.append(e)
    return run

