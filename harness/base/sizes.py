"""Sizes as people write them (40G, 512MiB) and as the harness prints them: binary units."""

import re

UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20,
         "MIB": 2**20, "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40,
         "TIB": 2**40}


def parse_size(text: str) -> int:
    """'40G', '512MiB', '1.5 GB', '1073741824' -> bytes; ValueError for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).upper() not in UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 40G, 512M)")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def human(size: float) -> str:
    if size < 1024:
        return f"{int(size)} B"
    for unit in ("KiB", "MiB", "GiB"):
        size /= 1024
        if size < 1024 or unit == "GiB":
            break
    return f"{size:.1f} {unit}"
