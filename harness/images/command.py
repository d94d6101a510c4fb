"""`vfio-harness images build|list|clean|prune`: the image cache's commands."""

import argparse
import json
import time

from harness.base.errors import BadInput
from harness.base.progress import say
from harness.images import cache_book
from harness.images.series import Series
from harness.images.store import ImageStore


def run(args: argparse.Namespace, store: ImageStore) -> int:
    if args.images_action == "build":
        began = time.monotonic()
        images = store.build(args.kernel, force=args.force)
        if args.kernel_patches:
            images = store.build_series(Series.load(args.kernel_patches), images)
        say(f"{store.platform.arch} images ready in {time.monotonic() - began:.1f} s: "
            f"{', '.join(images.kernels)} kernels, rootfs with QEMU {images.rootfs.qemu_version}")
        return 0
    if args.images_action == "list":
        print(f"cache: {store.cache} ({store.platform.arch})")
        for s in store.states():
            status = "ok" if s.ok else s.problem
            versions = ""
            if s.ok:
                manifest = json.loads((s.directory / "manifest.json").read_text())
                versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
                if manifest.get("configured_by"):
                    versions += f" ({manifest['configured_by']})"
            print(f"  {s.name:<18} {s.key}  {status:<10} {versions}")
        for stale in store.stale():
            print(f"  (stale) {stale.name}")
        return 0
    if args.images_action == "clean":
        for path in store.clean(everything=args.all):
            print(f"removed {path}")
        return 0
    if args.images_action == "prune":
        if args.max_size is None and args.older_than is None:
            raise BadInput("images prune: say how much to keep: --max-size SIZE and/or "
                           "--older-than DAYS")
        cache_book.prune(store.cache, store.everyones_images(), args.max_size,
                         args.older_than, args.dry_run)
        return 0
    raise BadInput(f"unknown images action {args.images_action}")
