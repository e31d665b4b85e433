"""Check the TUI in a browser: serve it with textual-serve, screenshot the page with headless Chromium.

    python benchmarks/browser_screenshot.py OUT.png [--workspace PATH] [--screen compare]

Without --workspace it builds a small study workspace (30 items × base, imitation, teacher) in a
temp folder. Needs `chromium` (apt-get install -y chromium) and textual-serve (a mirage
dependency). Exit code 0 when the PNG was written; tests/test_tui_browser.py runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
]


def chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_workspace(path: Path) -> None:
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from compare_data import build_study

    from core.store.workspace import Workspace

    ws = Workspace.init(path)
    build_study(ws, n_items=30)
    ws.close()


def serve_script(workspace: Path, screen: str, port: int) -> str:
    command = shlex.join([sys.executable, "-m", "tui", "--workspace", str(workspace), "--screen", screen])
    return (
        "from textual_serve.server import Server\n"
        f"Server({command!r}, host='127.0.0.1', port={port}, title='mirage').serve()\n"
    )


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SystemExit(f"textual-serve did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def screenshot(out: Path, workspace: Path, screen: str = "compare", wait_ms: int = 8000) -> None:
    browser = chromium()
    if browser is None:
        raise SystemExit("chromium not found (apt-get install -y chromium)")
    port = free_port()
    log = open(out.with_suffix(".serve.log"), "w")
    server = subprocess.Popen(
        [sys.executable, "-c", serve_script(workspace, screen, port)],
        cwd=str(REPO),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port)
        with tempfile.TemporaryDirectory() as profile:
            # `--screenshot` shoots at the page's load event, before the app has drawn over the
            # websocket; the DevTools protocol lets us wait for the app, then capture.
            debug_port = free_port()
            browser_proc = subprocess.Popen(
                [
                    browser,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    "--window-size=1400,900",
                    f"--remote-debugging-port={debug_port}",
                    "about:blank",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                png = asyncio.run(_capture(debug_port, f"http://127.0.0.1:{port}/", wait_ms / 1000))
            finally:
                browser_proc.terminate()
                try:
                    browser_proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    browser_proc.kill()
            out.write_bytes(png)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    if not out.exists():
        raise SystemExit(f"chromium wrote no screenshot to {out}")


async def _capture(debug_port: int, url: str, wait_s: float) -> bytes:
    import aiohttp  # textual-serve's own dependency

    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 30
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{debug_port}/json/list") as r:
                    pages = [p for p in await r.json() if p.get("type") == "page"]
                if pages:
                    break
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("chromium's DevTools endpoint never came up")
            await asyncio.sleep(0.2)
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1000))

            async def call(method: str, **params):
                msg_id = next(ids)
                await ws.send_json({"id": msg_id, "method": method, "params": params})
                async for msg in ws:
                    data = json.loads(msg.data)
                    if data.get("id") == msg_id:
                        return data.get("result", {})
                raise SystemExit(f"DevTools closed during {method}")

            await call("Page.enable")
            await call("Page.navigate", url=url)
            await asyncio.sleep(wait_s)  # the app starts in its own process, then draws
            shot = await call("Page.captureScreenshot", format="png")
            return base64.b64decode(shot["data"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--workspace", type=Path)
    ap.add_argument("--screen", default="compare")
    ap.add_argument("--wait-ms", type=int, default=8000)
    args = ap.parse_args()
    if args.workspace:
        screenshot(args.out.resolve(), args.workspace, args.screen, args.wait_ms)
        return
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        build_workspace(ws)
        screenshot(args.out.resolve(), ws, args.screen, args.wait_ms)
    print(os.fspath(args.out))


if __name__ == "__main__":
    main()
