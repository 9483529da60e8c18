"""One headless Chromium for a test, driven over the DevTools protocol through a pipe.

`Browser(profile)` starts Chromium with `--remote-debugging-pipe` and a user data directory of
its own (so nothing, cookies included, is shared with another `Browser`), and attaches to one
tab. Chromium reads commands on its descriptor 3 and writes answers and events on its
descriptor 4, one JSON object per message, each ended by a NUL byte. `subprocess` cannot put a
descriptor at a chosen number and `preexec_fn` is unsafe in a process with threads, so the pipes
are handed over as stdin and stdout and `sh` moves them to 3 and 4 before it execs the browser.

- `open(url)` navigates the tab and returns when the page has fired its load event; `until`
  picks which document counts when the page moves on by itself (a meta refresh), by its URL.
- `html()` is the live DOM serialized (`document.documentElement.outerHTML`, what `--dump-dom`
  prints); `screenshot(width, height)` a PNG of exactly that viewport, at one device pixel per
  CSS pixel.
- Every call has a deadline; missing it raises `BrowserError` naming what was awaited (the URL
  for a page), as does an error answer or the browser exiting, with the end of its stderr.
- `close()` (or leaving the `with` block) asks Chromium to close, reaps it, and kills its
  process group only if it has not exited within `CLOSE_S`.

Synchronous and single-threaded: events that arrive while a command waits for its answer are
kept, in order, for the next wait.
"""

import base64
import collections
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

EXECUTABLE = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                   if shutil.which(name)), None)
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
TIMEOUT_S = 30.0  # for one page or one command: far above what a loaded machine needs
CLOSE_S = 10.0
_MOVE_PIPES = 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null'  # stdin, stdout -> Chromium's 3, 4


class BrowserError(AssertionError):
    """Chromium did not do what was asked: an error answer, a deadline missed, the process gone."""


class Browser:
    """A headless Chromium with one tab, its own profile directory, and a pipe to drive it."""

    def __init__(self, profile: Path, executable: str | None = EXECUTABLE, flags: tuple[str, ...] = FLAGS):
        if executable is None:
            raise BrowserError("no chromium on this machine")
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        self._stderr = tempfile.TemporaryFile()
        try:
            self._process = subprocess.Popen(
                ["/bin/sh", "-c", _MOVE_PIPES, executable, *flags, "--remote-debugging-pipe",
                 f"--user-data-dir={profile}", "about:blank"],
                stdin=commands_read, stdout=answers_write, stderr=self._stderr, start_new_session=True)
        except BaseException:
            for fd in (self._commands, self._answers):
                os.close(fd)
            self._stderr.close()
            raise
        finally:
            os.close(commands_read)
            os.close(answers_write)
        self._buffer = b""
        self._next_id = 0
        self._events: collections.deque[dict[str, Any]] = collections.deque()
        self._closed = False
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self._session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True},
                                      session=False)["sessionId"]
            self.call("Page.enable")
            self.call("Page.setLifecycleEventsEnabled", {"enabled": True})
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, url: str, until: Callable[[str], bool] = lambda url: True, timeout_s: float = TIMEOUT_S) -> str:
        """Navigate to `url`; return the URL of the first document the tab then loads (load event
        fired) whose URL `until` accepts. A failed navigation or the deadline raises, naming `url`."""
        deadline = time.monotonic() + timeout_s
        self._events.clear()
        what = f"{url} to load"
        answer = self.call("Page.navigate", {"url": url}, deadline=deadline, what=what)
        if answer.get("errorText"):
            raise BrowserError(f"chromium could not open {url}: {answer['errorText']}")
        frame, urls = answer["frameId"], {answer["loaderId"]: url}
        while True:
            event = self._event(deadline, what)
            params = event.get("params", {})
            if event["method"] == "Page.frameNavigated" and params["frame"]["id"] == frame:
                urls[params["frame"]["loaderId"]] = params["frame"]["url"]
            elif (event["method"] == "Page.lifecycleEvent" and params["frameId"] == frame
                  and params["name"] == "load" and params["loaderId"] in urls and until(urls[params["loaderId"]])):
                return urls[params["loaderId"]]

    def html(self) -> str:
        """The tab's DOM as it is now, serialized."""
        answer = self.call("Runtime.evaluate", {"expression": "document.documentElement.outerHTML",
                                                "returnByValue": True})
        return answer["result"]["value"]

    def screenshot(self, width: int, height: int) -> bytes:
        """A PNG of the current page in a `width` x `height` viewport (the page is laid out again at
        that size first); the tab's own size afterwards."""
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        try:
            return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])
        finally:
            self.call("Emulation.clearDeviceMetricsOverride")

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = True,
             deadline: float | None = None, what: str = "") -> dict[str, Any]:
        """Send one command (to the tab, or to the browser with `session=False`) and return its answer."""
        deadline = time.monotonic() + TIMEOUT_S if deadline is None else deadline
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        self._send(json.dumps(message).encode() + b"\0", method)
        while True:
            reply = self._read(deadline, what or f"the answer to {method}")
            if reply.get("id") == message["id"]:
                if "error" in reply:
                    raise BrowserError(f"chromium refused {method}: {reply['error'].get('message')}")
                return reply["result"]
            if "method" in reply:
                self._events.append(reply)

    def close(self) -> None:
        """Close the browser and reap it (its process group killed if it does not exit in time)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._process.poll() is None:
                self._send(json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0", "Browser.close")
            self._process.wait(CLOSE_S)
        except (BrowserError, subprocess.TimeoutExpired):
            try:
                os.killpg(self._process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._process.wait()
        finally:
            os.close(self._commands)
            os.close(self._answers)
            self._stderr.close()

    def _event(self, deadline: float, what: str) -> dict[str, Any]:
        return self._events.popleft() if self._events else self._read(deadline, what)

    def _send(self, data: bytes, method: str) -> None:
        try:
            while data:
                data = data[os.write(self._commands, data):]
        except BrokenPipeError:
            raise BrowserError(self._gone(f"sending {method}")) from None

    def _read(self, deadline: float, what: str) -> dict[str, Any]:
        """The next message, whole."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._answers], [], [], left)[0]:
                raise BrowserError(f"chromium: no {what} within the deadline{self._stderr_tail()}")
            chunk = os.read(self._answers, 1 << 20)
            if not chunk:
                raise BrowserError(self._gone(f"waiting for {what}"))
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def _gone(self, doing: str) -> str:
        return f"chromium exited ({self._process.wait(CLOSE_S)}) while {doing}{self._stderr_tail()}"

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").splitlines()
        tail = "\n".join(line for line in lines if ":ERROR:dbus/" not in line)[-2000:]  # no D-Bus here: noise
        return f"; its stderr ends:\n{tail}" if tail else ""
