"""The HTML report as a browser shows it: headless Chromium renders the page from disk.

Checked twice: in the DOM Chromium built (cells, colours, links to evidence and
artifacts) and in a screenshot's pixels (the outcome colours are on screen).
"""

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from harness.results import report, results_file
from tests.unit.test_results_and_report import make_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None,
                                reason="Chromium is not installed (apt-get install chromium)")


def chromium(tmp_path: Path, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


def png_pixels(path: Path) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of an 8-bit, non-interlaced RGB(A) PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride = zlib.decompress(idat), width * channels
    previous, colours = bytearray(stride), set()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        colours.update(tuple(line[x:x + 3]) for x in range(0, stride, channels))
        previous = line
    return colours


@pytest.fixture
def page(tmp_path) -> Path:
    out, cells = make_run(tmp_path, {("legacy", "p2p-dma"): "pass",
                                     ("iommufd", "p2p-dma"): "fail",
                                     ("legacy", "dmabuf-per-region"): "skip"})
    results_file.write(out, cells, {**results_file.stamp("test", {}), "seed": 42,
                               "complete": True})
    return report.write_html(out)


def test_chromium_builds_the_matrix_with_links(page, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", page.as_uri())
    cells = re.findall(r'<td class="cell (\w+)[^"]*" data-cell="([^"]+)"', dom)
    assert sorted(cells) == [("fail", "intel-iommu-iommufd-dmabuf-p2p-dma"),
                             ("pass", "intel-iommu-legacy-dmabuf-p2p-dma"),
                             ("skip", "intel-iommu-legacy-dmabuf-dmabuf-per-region")]
    assert 'href="#intel-iommu-iommufd-dmabuf-p2p-dma"' in dom
    assert 'id="intel-iommu-iommufd-dmabuf-p2p-dma"' in dom
    assert 'href="intel-iommu-dmabuf/iommufd/l2-stderr.log"' in dom
    assert "3 cells, 2 not as expected" in dom  # the fail, and the skip that should pass


def test_the_outcome_colours_are_on_screen(page, tmp_path):
    shot = tmp_path / "shot.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1000,700", page.as_uri())
    colours = png_pixels(shot)
    for name in ("pass", "fail", "skip"):
        hexcode = report.COLOURS[name].lstrip("#")
        rgb = tuple(int(hexcode[i:i + 2], 16) for i in (0, 2, 4))
        assert rgb in colours, f"no {name} colour {report.COLOURS[name]} in the screenshot"


def test_the_default_matrix_reads_at_a_glance_in_a_1400_pixel_window(tmp_path):
    """Checks as rows in the order they run, columns vIOMMU > kernel > backend, each
    expected failure or skip showing its signature, and no sideways scrolling."""
    from harness.checks import matrix, registry

    out = tmp_path / "run"
    out.mkdir()
    cells = []
    for cell in matrix.cells():  # the default matrix, every cell as expected
        expectation = cell.expectation
        observed = {"xfail": "fail"}.get(expectation.outcome, expectation.outcome)
        cells.append(matrix.CellResult.settled(cell, observed, "as expected", {}, 1.0,
                                               findings=frozenset(expectation.signature)))
    results_file.write(out, cells, {**results_file.stamp("test", {}), "seed": 1,
                                    "complete": True})
    page = report.write_html(out)
    measured = tmp_path / "measured.html"
    measured.write_text(page.read_text().replace(
        "</body>", "<script>document.body.dataset.width = "
                   "document.documentElement.scrollWidth</script></body>"))
    dom = chromium(tmp_path, "--window-size=1400,1000", "--dump-dom", measured.as_uri())
    width = int(re.search(r'data-width="(\d+)"', dom).group(1))
    assert width <= 1400, f"the page is {width} pixels wide in a 1400-pixel window"
    table = dom[dom.index('<table id="matrix">'):dom.index("</table>")]
    rows = re.findall(r'<th class="check">([^<]+)</th>', table)
    assert rows == list(registry.names())
    headers = re.findall(r"<tr><th>(\w+)</th>", table)
    assert headers == ["vIOMMU", "kernel", "backend"]
    assert table.count("<td class=\"cell") == len(cells) == 108
    # a check with no cell on a backend is a dash there, never "not run" (11 kernel checks'
    # vfio-user places and 2 vfio-user checks' kernel places, on each of 4 L1s)
    assert table.count('<td class="none"') == 4 * (11 + 2 * 2)
    assert "not run" not in table
    for c in cells:
        if c.cell.expectation.signature:  # shown under the outcome, in its cell
            shown = re.search(rf'data-cell="{c.cell.id}"[^>]*>.*?</td>', table).group(0)
            assert ", ".join(c.cell.expectation.signature) in shown, shown
