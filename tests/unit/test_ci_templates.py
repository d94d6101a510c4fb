"""The CI templates: valid YAML, shards by the run filters, a merge, JUnit published."""

from pathlib import Path

import yaml

from harness.checks import matrix
from harness.platforms import AARCH64, PLATFORMS

CI = Path(__file__).parent.parent.parent / "ci"


def test_gitlab_shards_the_default_matrix_and_merges():
    ci = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    shards = ci["matrix"]["parallel"]["matrix"][0]
    assert sorted(shards["VIOMMU"]) == sorted(matrix.DEFAULT_VIOMMUS)
    assert sorted(shards["KERNEL"]) == ["dmabuf", "no-dmabuf"]
    script = " ".join(ci["matrix"]["script"])
    assert '--viommu "$VIOMMU" --kernel "$KERNEL"' in script and "--junit" in script
    assert ci["matrix"]["artifacts"]["reports"]["junit"] == "results/shard-*/junit.xml"
    assert "vfio-harness report merge results/shard-*" in " ".join(ci["report"]["script"])
    assert ci["images"]["cache"]["policy"] == "pull-push"
    assert ci["lint"]["script"][-1] == "mypy harness"
    arm = ci["matrix-arm64"]
    assert sorted(arm["parallel"]["matrix"][0]["VIOMMU"]) == sorted(AARCH64.default_viommus)
    assert "--arch aarch64" in " ".join(arm["script"])
    assert ci["report"]["needs"] == ["matrix", "matrix-arm64"]
    assert "vfio-harness images build --arch aarch64" in ci["images"]["script"]


def test_github_shards_the_default_matrix_and_merges():
    wf = yaml.safe_load((CI / "github" / "vfio-harness.yml").read_text())
    jobs = wf["jobs"]
    strategy = jobs["matrix"]["strategy"]["matrix"]
    excluded = {(e["arch"], e["viommu"]) for e in strategy["exclude"]}
    shards = {(a, v) for a in strategy["arch"] for v in strategy["viommu"]} - excluded
    assert shards == {(p.arch, v) for p in PLATFORMS.values() for v in p.default_viommus}
    assert sorted(strategy["kernel"]) == ["dmabuf", "no-dmabuf"]
    run = " ".join(step.get("run", "") for step in jobs["matrix"]["steps"])
    assert "--arch ${{ matrix.arch }} --viommu ${{ matrix.viommu }}" in run
    report = " ".join(step.get("run", "") for step in jobs["report"]["steps"])
    assert "vfio-harness report merge results/shard-*" in report
    assert any("action-junit-report" in step.get("uses", "") for step in jobs["report"]["steps"])
    assert jobs["matrix"]["needs"] == "images"
