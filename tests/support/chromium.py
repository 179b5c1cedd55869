"""A real headless Chromium for page tests, driven over the Chrome DevTools protocol (a WebSocket,
spoken with the `websockets` package: no driver, no new dependency)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
from websockets.sync.client import ClientConnection, connect

T = TypeVar("T")


def find_chromium() -> str | None:
    """Debian's chromium (scripts/setup.sh installs it), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.25) -> T:
    """Poll `probe` until it returns something truthy, or fail saying what never happened."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(interval_s)  # polling with a deadline
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class DevTools:
    """Just enough of the Chrome DevTools protocol: run JavaScript in the page, keep its console,
    take a screenshot."""

    def __init__(self, url: str) -> None:
        self._ws: ClientConnection = connect(url, max_size=2**26)
        self._next_id = 0
        self.console: list[str] = []
        self._command("Runtime.enable")

    def evaluate(self, expression: str, *, user_gesture: bool = False) -> Any:
        """The value of `expression` (awaited if a promise); a page exception fails the test."""
        result = self._command(
            "Runtime.evaluate",
            expression=expression,
            returnByValue=True,
            awaitPromise=True,
            userGesture=user_gesture,
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"page exception in {expression!r}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, width: int = 1280) -> Path:
        """The whole page (not only the window) as a PNG at `path`."""
        height = int(self.evaluate("Math.ceil(document.documentElement.scrollHeight)"))
        self._command(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        try:
            shot = self._command("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        finally:
            self._command("Emulation.clearDeviceMetricsOverride")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        self._ws.close()

    def _command(self, method: str, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        self._ws.send(json.dumps({"id": self._next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv(timeout=30))
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise AssertionError(f"DevTools {method}: {message['error']}")
                return message["result"]  # type: ignore[no-any-return]
            if message.get("method") == "Runtime.consoleAPICalled":
                args = message["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif message.get("method") == "Runtime.exceptionThrown":
                self.console.append(str(message["params"]["exceptionDetails"].get("exception", {})))


@contextmanager
def headless_chromium(chromium: str, url: str, profile: Path, wav: Path | None = None) -> Iterator[DevTools]:
    """Chromium on `url` with `wav` as its microphone; yields a DevTools session on that page."""
    args = [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1280,900",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        "--remote-debugging-port=0",
    ]
    if wav is not None:
        args.append(f"--use-file-for-fake-audio-capture={wav}%noloop")  # played once, then silence
    args.append(url)
    log = (profile.parent / "chromium.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    devtools: DevTools | None = None
    try:
        # With port 0, Chromium picks a free port and writes it to the profile's DevToolsActivePort.
        active = profile / "DevToolsActivePort"
        wait_for(
            lambda: active.exists() and active.read_text().count("\n") >= 1 or process.poll() is not None,
            30,
            "Chromium's DevTools port",
        )
        assert process.poll() is None, (profile.parent / "chromium.log").read_text()[-3000:]
        port = int(active.read_text().split()[0])

        def page() -> str | None:
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list").json()
            return next(
                (
                    t["webSocketDebuggerUrl"]
                    for t in targets
                    if t["type"] == "page" and t["url"].startswith(url.split("#")[0])
                ),
                None,
            )

        devtools = DevTools(wait_for(page, 30, "the page's DevTools target"))
        path = httpx.URL(url).path
        wait_for(
            lambda: devtools.evaluate(
                f"location.pathname === {path!r} && document.readyState === 'complete'"
            ),
            30,
            f"{url} to load",
        )
        yield devtools
    finally:
        if devtools is not None:
            devtools.close()
        # Chromium's own process group (start_new_session), so its renderer and utility processes go too.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()
