"""The TUI in a browser: textual-serve + headless Chromium draws the Compare screen (skipped without chromium)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import browser_screenshot  # noqa: E402

pytestmark = pytest.mark.timeout(180)


@pytest.mark.skipif(browser_screenshot.chromium() is None, reason="chromium not installed")
@pytest.mark.skipif(importlib.util.find_spec("textual_serve") is None, reason="textual-serve not installed")
def test_compare_screen_in_a_browser(tmp_path):
    ws = tmp_path / "ws"
    browser_screenshot.build_workspace(ws)
    out = tmp_path / "compare.png"
    browser_screenshot.screenshot(out, ws, "compare")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = out.with_suffix(".serve.log").read_text()
    assert "GET /ws?" in log and '" 101 ' in log  # the page opened the app's websocket
    # The splash page alone is ~14 KB; the drawn app (text, borders, colours) is several times that.
    assert out.stat().st_size > 30_000
