"""A run's results as KCIDB JSON (schema v5.3), for kernel CI systems that pool results.

KCIDB (KernelCI's database) takes checkouts, builds and tests. Here a run is a
checkout (the L1 kernel source and any series applied to it), each L1 kernel
variant a build of it, and each cell a test at the path
`vfio.<check>.<vIOMMU>.<backend>`. Statuses say what happened, not what was
hoped: an expected failure that happened is FAIL (its `misc` says it was
expected and which finding it showed), an unexpected pass PASS, a cell that an
L1 or the harness kept from running MISS, a cell whose L2 went wrong ERROR.
Only json is needed to write it; tests validate it with `kcidb-io`'s schema.
"""

import json
from pathlib import Path

from harness.base import files
from harness.verdicts import kernel_health

ORIGIN = "vfio_harness"
VERSION = {"major": 5, "minor": 3}

#: outcome -> KCIDB status (an infrastructure error is MISS: see `status`)
STATUS = {"pass": "PASS", "xpass": "PASS", "fail": "FAIL", "xfail": "FAIL", "skip": "SKIP",
          "error": "ERROR"}


def status(cell: dict) -> str:
    if cell["outcome"] == "error" and cell.get("infrastructure"):
        return "MISS"  # the L1 (or the harness) failed: the test never ran
    return STATUS[cell["outcome"]]


def path(cell: dict) -> str:
    return ".".join(["vfio"] + [cell[k].replace("-", "_")
                                for k in ("check", "viommu", "backend")])


def document(*runs: dict) -> dict:
    """One KCIDB document holding each results.json in `runs` as a checkout of its own."""
    doc: dict = {"version": VERSION, "checkouts": [], "builds": [], "tests": []}
    for data in runs:
        run = data["run"]
        checkout_id = f"{ORIGIN}:{run['run_id']}"
        series = run.get("kernel_series") or {}
        checkout = {"id": checkout_id, "origin": ORIGIN, "start_time": run["started"],
                    "valid": True,
                    "misc": {"front_end": run.get("front_end"),
                             "harness_version": run.get("harness_version"),
                             "harness_source": run.get("harness_source"),
                             "complete": run.get("complete"),
                             "kernel_series": series, "l2_qemu": run.get("l2_qemu")}}
        versions = sorted(set((run.get("kernels") or {}).values()))
        if len(versions) == 1:
            checkout["git_commit_name"] = f"v{versions[0]}"
        hashes = sorted({s.get("sha256") for s in series.values() if s.get("sha256")})
        if len(hashes) == 1:
            checkout["patchset_hash"] = hashes[0]
        doc["checkouts"].append(checkout)
        kernels = sorted({c["kernel"] for c in data["cells"]} | set(run.get("kernels") or {}))
        for kernel in kernels:
            build = {"id": f"{checkout_id}:{kernel}", "checkout_id": checkout_id,
                     "origin": ORIGIN, "config_name": kernel, "status": "PASS",
                     "misc": {"version": (run.get("kernels") or {}).get(kernel),
                              "image": (run.get("kernel_images") or {}).get(kernel),
                              "tree": (run.get("kernel_trees") or {}).get(kernel)}}
            if run.get("arch"):
                build["architecture"] = run["arch"]
            doc["builds"].append(build)
        for cell in data["cells"]:
            doc["tests"].append({
                "id": f"{checkout_id}:{cell['id']}", "build_id": f"{checkout_id}:{cell['kernel']}",
                "origin": ORIGIN, "path": path(cell), "status": status(cell),
                "start_time": run["started"], "duration": float(cell.get("duration_s", 0.0)),
                "comment": cell.get("reason", "")[:1000],
                "misc": {"cell": cell["id"], "outcome": cell["outcome"],
                         "expected": cell["expected"], "met": cell["met"],
                         "signature": cell.get("expected_signature", []),
                         "findings": cell.get("findings", []),
                         "kernel_reports": kernel_health.titles(cell.get("evidence")),
                         "error_stage": cell.get("error_stage")}})
    return doc


def write(out: Path, *runs: dict) -> Path:
    files.write_atomic(out, json.dumps(document(*runs), indent=2) + "\n")
    return out
