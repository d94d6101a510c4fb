"""The image recipe (images/recipe.toml) and the keys that decide rebuilds.

A key is a hash of exactly what an artifact is made from: the recipe's own
section, the files it names, and the version of the build procedure. So a
change to the rootfs package list does not rebuild two kernels, and a change
to a kernel fragment rebuilds only the variants that use it.
"""

import hashlib
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from harness.base.errors import BadInput
from harness.images import kconfig
from harness.platforms import X86_64, Platform

#: Bump when the build procedure itself changes in a way that changes its output, per kind
#: of key: "rootfs-base" is debootstrap alone, which rootfs 2 (the packaged QEMU's record
#: in the manifest) did not change.
BUILD_FORMAT = {"kernel": 1, "rootfs": 2, "rootfs-base": 1}


def default_recipe_dir() -> Path:
    """$VFIO_HARNESS_RECIPES, else the checkout the package runs from, else ./images.

    The recipes live in the repository, not in the package: an editable install
    finds them beside itself, any other (tox, a wheel) in the checkout it runs in.
    """
    env = os.environ.get("VFIO_HARNESS_RECIPES")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "images"
    return beside if (beside / "recipe.toml").is_file() else Path.cwd() / "images"


@dataclass(frozen=True)
class KernelVariant:
    name: str
    package: str
    version: str
    sha256: str
    tarball: str
    #: Merged before `required`, not checked: how the build gets what is required (a
    #: selector of an option with no prompt) and what only makes it faster.
    choices: tuple[Path, ...]
    required: tuple[Path, ...]  # the common fragments, then the variant's own
    #: Merged after `required` but not checked, and only on the recipe's patched source.
    unchecked: tuple[Path, ...] = ()
    #: The harness's patches to the pinned source (Kconfig prompts).
    patches: tuple[Path, ...] = ()
    #: The variant whose object tree this one's compile starts from (None: from scratch).
    built_from: str | None = None
    #: The platform it is built for, and what each make is given for it (ARCH=, CROSS_COMPILE=).
    arch: str = X86_64.arch
    make_args: tuple[str, ...] = ()
    #: The variant whose expectations it is held to ("": its own): the debug kernel is a
    #: dmabuf kernel with the kernel's own checks on.
    judged_as: str = ""
    #: Given to the kernel at boot (not built in: changing them rebuilds nothing).
    boot_args: tuple[str, ...] = ()

    def required_options(self) -> dict[str, str]:
        options: dict[str, str] = {}
        for fragment in self.required:
            options.update(kconfig.parse(fragment.read_text()))
        return options

    @property
    def has_dmabuf(self) -> bool:
        """Whether the variant has VFIO dma-buf, as its checked fragments require."""
        return self.required_options().get("CONFIG_VFIO_PCI_DMABUF") == "y"

    def key(self) -> str:
        return _digest("kernel", {
            "arch": self.arch, "make_args": self.make_args,
            "package": self.package, "version": self.version, "sha256": self.sha256,
            "base": "allnoconfig",
            "choices": [_file_fingerprint(p) for p in self.choices],
            "required": [_file_fingerprint(p) for p in self.required],
            "unchecked": [_file_fingerprint(p) for p in self.unchecked],
            "patches": [_file_fingerprint(p) for p in self.patches],
        })

    def patches_tag(self) -> str:
        """What the patched source is called apart from the pristine one ("" if no patch)."""
        if not self.patches:
            return ""
        blob = json.dumps([_file_fingerprint(p) for p in self.patches])
        return "+recipe-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Rootfs:
    mirror: str
    suite: str
    packages_file: Path
    init: Path
    sshd_config: Path
    headroom_mb: int
    #: The Debian architecture, and the platform's QEMU under test (its package).
    debian_arch: str = X86_64.debian_arch
    qemu_package: str = X86_64.l2_package

    @property
    def packages(self) -> list[str]:
        listed = [line.strip() for line in self.packages_file.read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
        return [self.qemu_package, *(p for p in listed if p != self.qemu_package)]

    def base_key(self) -> str:
        """What debootstrap alone depends on: a changed init script reuses the bootstrap."""
        return _digest("rootfs-base", {"mirror": self.mirror, "suite": self.suite,
                                       "arch": self.debian_arch,
                                       "packages": sorted(self.packages)})

    def key(self) -> str:
        return _digest("rootfs", {
            "base": self.base_key(), "headroom_mb": self.headroom_mb,
            "init": _file_fingerprint(self.init),
            "sshd_config": _file_fingerprint(self.sshd_config),
        })


@dataclass(frozen=True)
class Recipe:
    directory: Path
    mirror: str
    suite: str
    kernels: dict[str, KernelVariant]
    rootfs: Rootfs
    platform: Platform = X86_64
    #: The variants a run takes by default and `images build` builds (the others on request).
    matrix_kernels: tuple[str, ...] = ()
    #: The variants a kernel series is judged on by default (the debug checks on, where
    #: the platform's debug kernel can report what a series brings).
    series_kernels: tuple[str, ...] = ()

    @classmethod
    def load(cls, directory: Path | None = None, platform: Platform = X86_64) -> "Recipe":
        """The recipe as it builds for `platform`: the common parts and the platform's own
        ([kernel.arch.<arch>]: its make targets, its fragments after the common ones)."""
        directory = (directory or default_recipe_dir()).resolve()
        path = directory / "recipe.toml"
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise BadInput(f"no image recipe at {path} (set VFIO_HARNESS_RECIPES or "
                           f"run from a checkout of vfio-harness)") from None
        except tomllib.TOMLDecodeError as e:
            raise BadInput(f"{path}: {e}") from None
        try:
            deb, k, r = data["debian"], data["kernel"], data["rootfs"]

            def files(names: list[str]) -> tuple[Path, ...]:
                paths = tuple(directory / n for n in names)
                for p in paths:
                    if not p.is_file():
                        raise BadInput(f"{path}: names {p}, which does not exist")
                return paths

            arch = k.get("arch", {}).get(platform.arch)
            if arch is None:
                raise BadInput(f"{path}: no [kernel.arch.{platform.arch}] section: the recipe "
                               f"does not say how to build a kernel for {platform.arch}")
            kernels = {
                name: KernelVariant(
                    name=name, package=k["package"], version=k["version"],
                    sha256=k["sha256"], tarball=k["tarball"],
                    choices=files(k.get("choices", []) + arch.get("choices", [])),
                    required=files(k["required"] + arch.get("required", []) + frags),
                    unchecked=files(k.get("unchecked", {}).get(name, [])),
                    patches=files(k.get("patches", [])),
                    built_from=k.get("built_from", {}).get(name),
                    arch=platform.arch, make_args=tuple(platform.make_args()),
                    judged_as=k.get("judged_as", {}).get(name, name),
                    boot_args=tuple(k.get("boot_args", {}).get(name, ())))
                for name, frags in k["variants"].items()
            }
            default = tuple(k.get("matrix", {}).get("default", kernels))
            series = tuple(k.get("matrix", {}).get("series", default))
            for name in (*default, *series, *(v.judged_as for v in kernels.values()),
                         *k.get("boot_args", {})):
                if name not in kernels:
                    raise BadInput(f"{path}: names kernel variant {name!r}, which is not one")
            for name, v in kernels.items():
                if v.built_from is not None and v.built_from not in kernels:
                    raise BadInput(f"{path}: kernel variant {name} is built from "
                                   f"{v.built_from!r}, which is not a variant")
            rootfs = Rootfs(mirror=deb["mirror"], suite=deb["suite"],
                            packages_file=files([r["packages"]])[0],
                            init=files([r["init"]])[0],
                            sshd_config=files([r["sshd_config"]])[0],
                            headroom_mb=int(r["headroom_mb"]),
                            debian_arch=platform.debian_arch,
                            qemu_package=platform.l2_package)
        except KeyError as e:
            raise BadInput(f"{path}: missing key {e}") from None
        return cls(directory=directory, mirror=deb["mirror"], suite=deb["suite"],
                   kernels=kernels, rootfs=rootfs, platform=platform, matrix_kernels=default,
                   series_kernels=series)


def _file_fingerprint(path: Path) -> tuple[str, str]:
    return (path.name, hashlib.sha256(path.read_bytes()).hexdigest())


def _digest(kind: str, material: dict) -> str:
    blob = json.dumps({"kind": kind, "format": BUILD_FORMAT[kind],
                       **material}, sort_keys=True, default=list)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
