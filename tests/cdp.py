"""A small driver for headless Chromium over the DevTools protocol (websocket-client): open a
page, type, click with real mouse events (a click a page cannot tell from a person's), wait
for text, take screenshots at a given width."""

from __future__ import annotations

import base64
import itertools
import json
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import websocket

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-allow-origins=*", "--remote-debugging-port=0"]


class Browser:
    def __init__(self, executable: str, profile: Path, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={profile}",
                                      "about:blank"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        endpoint = None
        while endpoint is None and time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            found = re.search(r"DevTools listening on (ws://127\.0\.0\.1:(\d+)/\S+)", line)
            if found:
                endpoint = int(found.group(2))
            elif not line and self.proc.poll() is not None:
                raise RuntimeError("chromium exited before DevTools came up")
        assert endpoint is not None, "no DevTools endpoint"
        # Chromium goes on writing to stderr: drain it, or a full pipe would block it.
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        targets = httpx.get(f"http://127.0.0.1:{endpoint}/json/list", timeout=timeout).json()
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                              suppress_origin=True)
        self._ids = itertools.count(1)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        mine = next(self._ids)
        self.ws.send(json.dumps({"id": mine, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == mine:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
        raise TimeoutError(method)

    def js(self, expression: str) -> Any:
        got = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in got:
            raise RuntimeError(f"{expression}: {got['exceptionDetails']}")
        return got["result"].get("value")

    def width(self, px: int, height: int = 900) -> None:
        self.call("Emulation.setDeviceMetricsOverride", width=px, height=height,
                  deviceScaleFactor=1, mobile=px < 600)

    def go(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete' && location.href !== 'about:blank'")

    def wait_for(self, condition: str, seconds: float | None = None) -> None:
        deadline = time.monotonic() + (seconds or self.timeout)
        while time.monotonic() < deadline:
            try:
                if self.js(f"!!({condition})"):
                    return
            except RuntimeError:
                pass  # a navigation in between
            time.sleep(0.1)
        raise TimeoutError(f"{condition}; page: {self.text()[:500]!r}")

    def text(self) -> str:
        try:
            return str(self.js("document.body ? document.body.innerText : ''"))
        except RuntimeError:
            return ""

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (user activation included)."""
        box = self.js(f"(function() {{ var e = document.querySelector({json.dumps(selector)});"
                      "e.scrollIntoView({block: 'center'}); var r = e.getBoundingClientRect();"
                      "return [r.left + r.width / 2, r.top + r.height / 2]; })()")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def type_into(self, selector: str, text: str, *, clear: bool = True) -> None:
        """Focus, select what is there, and type: input events fire as for a person."""
        self.js(f"(function() {{ var e = document.querySelector({json.dumps(selector)});"
                f"e.focus(); if ({json.dumps(clear)}) e.select(); }})()")
        self.call("Input.insertText", text=text)

    def screenshot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
