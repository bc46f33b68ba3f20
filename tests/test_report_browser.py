"""The comparison report in a real headless browser (Debian's chromium): it loads without console
errors, every figure decodes and renders, the leaderboard has one row per strategy, and a
screenshot is not blank. Built from real tiny compares on scikit-learn digits."""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import tiny_image_run_config

from graft.compare import run_compare
from graft.compare.spec import parse_spec

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
STRATEGIES = ["full", "linear_probe", "lp_ft"]
QUIET_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--disable-domain-reliability",
    "--hide-scrollbars",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# A test-only probe appended to a copy of the page: once everything has loaded, the title
# becomes the number of images, of broken ones (naturalWidth 0) and of leaderboard rows.
PROBE = """<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter((i) => !i.complete || i.naturalWidth === 0).length;
  const rows = document.querySelectorAll("#leaderboard tbody tr").length;
  document.title = `probe images=${imgs.length} broken=${broken} rows=${rows}`;
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or (CHROMIUM if os.path.exists(CHROMIUM) else None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed (scripts/setup_test_tools.sh installs it)")
        pytest.skip("chromium is not installed")
    return found


def run_browser(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [chromium(), *QUIET_FLAGS, f"--user-data-dir={profile}", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def console_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def test_console_lines_are_seen(tmp_path: Path) -> None:
    """The check above is not vacuous: a console error of a page does reach stderr."""
    page = tmp_path / "bad.html"
    page.write_text('<html><body><script>console.error("boom")</script></body></html>')
    result = run_browser(
        page, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom"
    )
    assert any("boom" in line for line in console_lines(result))


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    base = tiny_image_run_config(
        {"dataset": "digits"},
        out,
        data={
            "train_size": 120,
            "val_size": 40,
            "test_size": 60,
            "extra_eval": {"digits again": {"dataset": "digits"}},  # a stand-in shifted set
            "extra_size": 60,
        },
        train={"epochs": 2, "batch_size": 40},
        optim={"lr": 3e-3},
    )
    spec = parse_spec({"strategies": STRATEGIES, "seeds": 2})
    result = run_compare(base, spec, default_name="browser", isolate=False, quiet=True)
    assert result.report is not None
    return result.report


def test_report_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert "<script" not in text and "http://" not in text and "https://" not in text

    # Every <img> embeds a PNG that decodes.
    sources = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert len(sources) >= 5  # accuracy, curves, cost, shift, confusion
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)

    # Load the page itself: no console errors, and a screenshot that is not blank.
    shot = tmp_path / "report.png"
    loaded = run_browser(
        report,
        tmp_path / "profile1",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={shot}",
        "--window-size=1280,2000",
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    # chromium logs every console message (errors and uncaught exceptions included) as an
    # INFO:CONSOLE line, without its level; the page has no script, so any line is a fault.
    assert not console_lines(loaded), console_lines(loaded)
    assert shot.is_file()
    from PIL import Image

    with Image.open(shot) as image:
        assert image.size == (1280, 2000)
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, tables and figures, not blank
    shutil.copy(shot, report.parent / "report-screenshot.png")  # for a person to look at

    # A copy with the probe: the browser's own view of the images and the leaderboard.
    probed = tmp_path / "probed.html"
    probed.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dumped = run_browser(
        probed, tmp_path / "profile2", "--enable-logging=stderr", "--v=0", "--dump-dom"
    )
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    assert not console_lines(dumped), console_lines(dumped)
    title = re.search(r"<title>(.*?)</title>", dumped.stdout)
    assert title is not None
    assert title.group(1) == f"probe images={len(sources)} broken=0 rows={len(STRATEGIES)}"
    table = re.search(r'<table id="leaderboard">.*?</table>', dumped.stdout, re.S)
    assert table is not None
    body = re.search(r"<tbody>(.*?)</tbody>", table.group(0), re.S)
    assert body is not None
    rows = re.findall(r"<tr[ >]", body.group(1))
    assert len(rows) == len(STRATEGIES)
    for name in STRATEGIES:
        assert f"{name}</span>" in table.group(0)
