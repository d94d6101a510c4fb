"""A kernel built elsewhere, booted as is after its config is checked (--kernel-image)."""

import json
import subprocess
import sys

import pytest


def harness(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], capture_output=True,
                          text=True, timeout=600)


@pytest.fixture
def built_elsewhere(images, tmp_path):
    """The harness's dmabuf kernel, copied out as a user's build would be (it embeds its
    config with IKCONFIG; the copy of its .config stands beside it)."""
    kernel = images.kernels["dmabuf"]
    image = tmp_path / "bzImage"
    image.write_bytes(kernel.bzimage.read_bytes())
    config = tmp_path / ".config"
    config.write_text((kernel.directory / "config").read_text())
    return image, config


def test_a_kernel_image_is_booted_and_judged_in_its_role(built_elsewhere, tmp_path):
    image, _ = built_elsewhere
    p = harness("run", "--kernel-image", str(image), "--viommu", "intel-iommu",
                "--results", str(tmp_path / "r"))
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert "as the 'dmabuf' variant" in p.stderr
    run = json.loads((tmp_path / "r" / "results.json").read_text())["run"]
    assert run["kernel_images"]["dmabuf"]["config"] == "embedded (IKCONFIG)"
    assert run["kernels"] == {"dmabuf": "7.2.13"}


def test_a_kernel_without_iommufd_is_refused_naming_each_option(built_elsewhere, tmp_path):
    image, config = built_elsewhere
    text = config.read_text().replace("CONFIG_IOMMUFD=y", "# CONFIG_IOMMUFD is not set")
    config.write_text(text.replace("CONFIG_VFIO_DEVICE_CDEV=y",
                                   "# CONFIG_VFIO_DEVICE_CDEV is not set"))
    p = harness("run", "--kernel-image", str(image), "--kernel-config", str(config),
                "--viommu", "intel-iommu", "--results", str(tmp_path / "r"))
    assert p.returncode == 2
    assert "lacks what the 'dmabuf' scenarios need: CONFIG_IOMMUFD (is n, needs y), " \
           "CONFIG_VFIO_DEVICE_CDEV (is n, needs y)" in p.stderr
    assert "Traceback" not in p.stderr


def test_an_image_without_a_config_is_refused(tmp_path):
    fake = tmp_path / "bzImage"  # a boot header, and no kernel (so no config) behind it
    fake.write_bytes(b"\0" * 0x202 + b"HdrS" + b"\0" * (4096 - 0x206))
    p = harness("run", "--kernel-image", str(fake), "--results", str(tmp_path / "r"))
    assert p.returncode == 2 and "has no embedded config (CONFIG_IKCONFIG)" in p.stderr
