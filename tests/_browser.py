"""Drive Debian's headless Chromium through the Chrome DevTools Protocol over a pipe.

Standard library only: Chromium is started with ``--remote-debugging-pipe``, so it
reads DevTools commands (JSON, each terminated by a NUL byte) on file descriptor 3
and writes responses and events on file descriptor 4. No port is opened and no
browser is downloaded. :class:`Chromium` opens a page, records every request the
page makes (``Network.requestWillBeSent`` and WebSocket creations), reads the
rendered text and takes full-page PNG screenshots.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

#: Where Debian's ``chromium`` package installs the browser.
CHROMIUM = Path("/usr/bin/chromium")

#: Flags for a headless Chromium run as root on a machine without network access.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--hide-scrollbars",
    "--mute-audio",
    "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    """Chromium is missing, died, or answered a DevTools command with an error."""


def require_chromium() -> Path:
    """Return the Chromium executable; raise with the install command when it is absent."""
    if not CHROMIUM.exists():
        raise BrowserError(
            f"{CHROMIUM} not found: the real-browser tests need Debian's Chromium. "
            "Install it with `bash .ci/install-browser.sh` (apt-get install chromium)."
        )
    return CHROMIUM


class Chromium:
    """A headless Chromium process with one page, controlled over the DevTools pipe.

    Parameters
    ----------
    width, height : int
        Size of the viewport in CSS pixels.
    timeout : float
        Seconds to wait for any DevTools answer or page load.

    """

    def __init__(self, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        executable = require_chromium()
        self.timeout = timeout
        self._profile = tempfile.mkdtemp(prefix="daskmask-chromium-")
        self._stderr = tempfile.TemporaryFile(prefix="daskmask-chromium-stderr-")
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def place_pipes() -> None:  # runs in the child, before exec
            # Copies above 10 first, so that dup2 onto 3 and 4 cannot clobber an end.
            read_end = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD_CLOEXEC, 10)
            write_end = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._process = subprocess.Popen(
            [
                str(executable),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={self._profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
            # Not close_fds: it would close 3 and 4 after place_pipes; every other
            # descriptor of this process is close-on-exec (Python's default).
            close_fds=False,
            preexec_fn=place_pipes,  # noqa: PLW1509 - no threads are started before
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.send(
                "Target.attachToTarget", {"targetId": target, "flatten": True}
            )["sessionId"]
            self.send("Page.enable", session=self.session)
            self.send("Network.enable", session=self.session)
            self.send("Runtime.enable", session=self.session)
            self.set_viewport(width, height)
        except BaseException:
            self.close()
            raise

    # -- protocol -----------------------------------------------------------------------

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError("timed out waiting for Chromium")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                self._stderr.seek(0)
                stderr = self._stderr.read().decode(errors="replace")[-2000:]
                raise BrowserError(f"Chromium closed the DevTools pipe; stderr:\n{stderr}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Send one DevTools command and return its result; events are kept in ``events``."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            command["sessionId"] = session
        data = json.dumps(command).encode() + b"\0"
        while data:
            data = data[os.write(self._to_browser, data) :]
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_for_event(self, method: str, start: int = 0) -> dict[str, Any]:
        """Return the first event ``method`` received at index ``start`` or later."""
        deadline = time.monotonic() + self.timeout
        index = start
        while True:
            for event in self.events[index:]:
                if event["method"] == method and event.get("sessionId") == self.session:
                    return event
            index = len(self.events)
            message = self._read_message(deadline)
            if "method" in message:
                self.events.append(message)

    # -- page ---------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Navigate the page to ``url`` and wait for its load event and its fonts."""
        start = len(self.events)
        result = self.send("Page.navigate", {"url": url}, session=self.session)
        if result.get("errorText"):
            raise BrowserError(f"cannot open {url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired", start)
        self.evaluate("document.fonts.ready.then(() => true)")

    def evaluate(self, expression: str) -> Any:
        """Evaluate a JavaScript expression in the page (promises awaited); return its value."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=self.session,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def requested_urls(self) -> list[str]:
        """Every URL the page requested or opened a WebSocket to, in order."""
        urls = []
        for event in self.events:
            if event.get("sessionId") != self.session:
                continue
            if event["method"] == "Network.requestWillBeSent":
                urls.append(event["params"]["request"]["url"])
            elif event["method"] == "Network.webSocketCreated":
                urls.append(event["params"]["url"])
        return urls

    def set_viewport(self, width: int, height: int) -> None:
        """Resize the page's viewport (CSS pixels), like a browser window of that size."""
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=self.session,
        )

    def hover(self, x: float, y: float) -> None:
        """Move the mouse to page coordinates ``(x, y)`` (CSS pixels of the viewport)."""
        self.send(
            "Input.dispatchMouseEvent",
            {"type": "mouseMoved", "x": x, "y": y},
            session=self.session,
        )

    def click(self, x: float, y: float) -> None:
        """Click the left button at viewport coordinates ``(x, y)`` (CSS pixels)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent",
                {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                session=self.session,
            )

    def screenshot(self, full_page: bool = True) -> bytes:
        """Return a PNG screenshot of the viewport, or of the whole page."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": size["width"],
                "height": size["height"],
                "scale": 1,
            }
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", params, session=self.session)["data"]
        return base64.b64decode(data)

    # -- lifetime -----------------------------------------------------------------------

    def close(self) -> None:
        """Close the browser and remove its temporary profile."""
        if self._process.poll() is None:
            try:
                self.send("Browser.close")
            except (BrowserError, OSError):
                pass
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
