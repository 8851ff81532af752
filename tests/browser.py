"""Open an HTML file in headless Chromium: screenshot it and check that every image decodes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const bad = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40));
  document.body.setAttribute('data-check', JSON.stringify({n: imgs.length, bad: bad}));
});
</script>"""

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000"]


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not exe:
        pytest.skip("Chromium is not installed")
    return exe


def check_in_browser(html_path: Path, screenshot: Path) -> dict:
    """Load ``html_path`` in headless Chromium; return ``{"n": images, "bad": [...]}`` and write a screenshot."""
    exe = chromium()
    probe = html_path.with_name(html_path.stem + ".check.html")
    probe.write_text(html_path.read_text().replace("</body>", CHECK + "</body>"))
    profile = html_path.parent / ".chromium-profile"
    common = [exe, *FLAGS, f"--user-data-dir={profile}"]
    dom = subprocess.run([*common, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    subprocess.run([*common, f"--screenshot={screenshot}", "--window-size=1280,2400", html_path.as_uri()],
                   capture_output=True, timeout=120, check=False)
    m = re.search(r"data-check=\"([^\"]*)\"", dom.stdout)
    assert m, f"page did not load: {dom.stderr[-500:]}"
    return json.loads(m.group(1).replace("&quot;", '"'))
