"""The CI templates, checked the way their hosts would check them.

The GitLab pipeline runs for real on gitlab-ci-local's shell executor
(ci/gitlab-local.sh): its jobs build nothing new on a warm cache but boot every
shard's L1. What the jobs run is narrowed through the pipeline's own variables
(one check per shard, one unit module): the cells and unit tests themselves are
the other tests' work, the pipeline's is its jobs, shards, artifacts and merge. The GitHub
workflow cannot run here (no Actions runner), so it is held to the Actions
workflow schema, as GitHub would hold it before running anything.
"""

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from harness.checks import matrix
from harness.platforms import PLATFORMS

ROOT = Path(__file__).resolve().parents[2]
GITLAB = ROOT / "ci" / "gitlab-ci.yml"
GITHUB = ROOT / "ci" / "github" / "vfio-harness.yml"
STATE = ROOT / ".gitlab-ci-local"
#: ci/gitlab-local.sh's own deadline: a hung job must fail this test, not CI's clock.
PIPELINE_DEADLINE_S = 25 * 60


def _schema_check(schema: str, path: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("check-jsonschema")
    if exe is None:
        pytest.fail("check-jsonschema is missing: install the test extra (pip install '.[test]')")
    return subprocess.run([exe, "--builtin-schema", schema, str(path)],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("schema,path", [("vendor.github-workflows", GITHUB),
                                         ("vendor.gitlab-ci", GITLAB)],
                         ids=["github-workflow", "gitlab-ci"])
def test_template_meets_its_schema(schema, path):
    done = _schema_check(schema, path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_schema_check_refuses_a_broken_workflow(tmp_path):
    """The schema check can fail: a misspelt key is refused."""
    bad = tmp_path / "bad.yml"
    bad.write_text(GITHUB.read_text().replace("timeout-minutes:", "timeout-minutez:", 1))
    done = _schema_check("vendor.github-workflows", bad)
    assert done.returncode == 1 and "timeout-minutez" in done.stdout


def _pipeline_jobs() -> set[str]:
    """Job names as gitlab-ci-local prints them, `parallel: matrix` expanded."""
    spec = yaml.safe_load(GITLAB.read_text())
    jobs = set()
    for name, job in spec.items():
        if name.startswith(".") or not isinstance(job, dict) or "script" not in job:
            continue
        matrix = (job.get("parallel") or {}).get("matrix")
        if not matrix:
            jobs.add(name)
            continue
        for axes in matrix:
            (a, xs), (b, ys) = axes.items()
            jobs.update(f"{name}: [{x},{y}]" for x in xs for y in ys)
    return jobs


def _gitlab_local(*args: str) -> subprocess.CompletedProcess:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("gitlab-ci-local needs Node.js and npm, which this machine lacks")
    # A session of its own: past the deadline the whole pipeline (jobs, harness runs) gets
    # SIGTERM, not only the script, so nothing of it outlives the test.
    with subprocess.Popen(["bash", "ci/gitlab-local.sh", *args], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True) as p:
        try:
            out, err = p.communicate(timeout=PIPELINE_DEADLINE_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            out, err = p.communicate(timeout=120)
            pytest.fail(f"the pipeline passed its {PIPELINE_DEADLINE_S} s deadline:\n"
                        f"{(out + err)[-4000:]}")
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _passed(output: str) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^\s*PASS\s+\[[^]]*\]\s+(.+?)\s*$", output, re.M)}


#: What the pipeline test narrows the jobs to (ci/gitlab-ci.yml's variables).
CHECK = "dmabuf-per-region"
NARROWED = ("--variable", f"VFIO_HARNESS_RUN_ARGS=--check {CHECK}",
            "--variable", "VFIO_HARNESS_UNIT_TESTS=tests/unit/test_matrix.py")


def test_gitlab_pipeline_runs_on_a_shell_executor():
    done = _gitlab_local(*NARROWED)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    assert _passed(out) == _pipeline_jobs(), out[-6000:]
    # The report job saw every shard's results through the artifacts, not the work tree.
    merged = STATE / "artifacts" / "report" / "results" / "merged"
    cells = json.loads((merged / "results.json").read_text())["cells"]
    shards = {(c.get("arch", "x86_64"), c["viommu"], c["kernel"]) for c in cells}
    assert shards == {(p.arch, v, k) for p in PLATFORMS.values() for v in p.default_viommus
                      for k in ("dmabuf", "no-dmabuf")}
    unmet = [f'{c["id"]}: {c["reason"]}' for c in cells if not c["met"]]
    expected = [c for p in PLATFORMS.values()
                for c in matrix.cells(p.default_viommus, selected=(CHECK,), arch=p.arch)]
    assert sorted(c["id"] for c in cells) == sorted(c.id for c in expected) and not unmet, unmet
    assert {c["check"] for c in cells} == {CHECK}
    assert (merged / "report.html").is_file()


def test_gitlab_pipeline_failure_is_its_exit_code():
    """The report job alone has no shard artifacts to merge: the job and the script fail."""
    done = _gitlab_local("report")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-4000:]
    assert "the pipeline failed" in out and "report" not in _passed(out)
