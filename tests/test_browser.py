"""The 20-paper digest in a real headless Chromium at phone and desktop widths."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_email import dry_run, parse, parts

from conftest import NOW, REPO, capture

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Headless Chromium will not make a window narrower than 500 px, so the email is laid out in
# an iframe of the exact width; after layout it reports its scroll width, its viewport and its
# widest element to the page around it, which puts them in its title for --dump-dom.
PROBE = """<script>
window.addEventListener('load', function () {
  var widest = 0;
  document.querySelectorAll('body *').forEach(function (el) {
    widest = Math.max(widest, el.getBoundingClientRect().right);
  });
  parent.postMessage('probe ' + document.documentElement.scrollWidth + ' ' +
                     window.innerWidth + ' ' + Math.ceil(widest), '*');
});
</script>"""
FRAME = """<!doctype html><html><head><title>waiting</title></head><body style="margin:0">
<script>window.addEventListener('message', function (e) { document.title = e.data; });</script>
<iframe src="digest.html" style="width:{width}px;height:2000px;border:0"></iframe></body></html>"""
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--virtual-time-budget=2000"]

if CHROMIUM is None and os.environ.get("CI"):
    pytest.fail("chromium is missing: .ci/run installs Debian's chromium", pytrace=False)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium; .ci/run installs it")


def chromium(tmp_path: Path, width: int, *args: str) -> str:
    assert CHROMIUM is not None
    proc = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / f'profile{width}'}",
                           f"--window-size={width},2400", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def digest_html(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("browser")
    from conftest import base_config, toml_text

    path = tmp / "c.toml"
    path.write_text(toml_text(base_config(
        tmp, subscribers=[{"email": "all@example.org", "name": "Zoë", "max_papers": 20}],
        source=capture("hf_daily_papers_2025-06-02.json"))))
    (data,) = dry_run(path).values()
    return parts(parse(data))[1]


@pytest.mark.parametrize("width", [375, 600])
def test_no_horizontal_overflow_and_a_screenshot(digest_html: str, tmp_path: Path,
                                                 width: int, write_config: Callable[..., Path]
                                                 ) -> None:
    page = tmp_path / "digest.html"
    page.write_text(digest_html.replace("</body>", PROBE + "</body>"))
    frame = tmp_path / "frame.html"
    frame.write_text(FRAME.replace("{width}", str(width)))
    dom = chromium(tmp_path, 800, "--dump-dom", frame.as_uri())
    title = dom.split("<title>probe ", 1)[1].split("</title>", 1)[0]
    scroll, inner, widest = (int(x) for x in title.split())
    assert inner == width
    assert scroll <= width and widest <= width, f"overflow at {width}px: {title}"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"digest-{width}px-{NOW.date()}.png"
    plain = tmp_path / "plain.html"
    plain.write_text(digest_html)
    chromium(tmp_path, width, f"--screenshot={shot}", plain.as_uri())
    assert shot.stat().st_size > 10_000
