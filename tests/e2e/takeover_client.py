"""A person at a robot's takeover page without a browser: the page's protocol over its websocket, as takeover.js
speaks it (docs/takeover-protocol.md). Views, refusals and errors are read on a thread of their own."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path

from websockets.sync.client import ClientConnection, connect


class TakeoverClient:
    def __init__(self, url: str, operator: str, token: str, ca: Path, rate_hz: float = 5.0, image_side: int = 64):
        context = ssl.create_default_context(cafile=str(ca))
        self.ws: ClientConnection = connect(url, ssl=context, open_timeout=30, max_size=8 << 20).__enter__()
        self.ws.send(
            json.dumps(
                {"type": "hello", "operator": operator, "token": token, "rate_hz": rate_hz, "image_side": image_side}
            )
        )
        welcome = json.loads(self.ws.recv(timeout=30))
        assert welcome.get("type") == "welcome", welcome
        self.who = welcome["who"]
        self.seq = 0
        self.robot: dict | None = None
        self.views: list[dict] = []
        self.refusals: list[dict] = []
        self.errors: list[dict] = []
        self.on_view: Callable[[dict], None] | None = None  # called on the reader thread for every view
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="takeover-client", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for raw in self.ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "view" and self.on_view is not None:
                    self.on_view(message)
                with self._changed:
                    if kind == "view":
                        self.views.append(message)
                        del self.views[:-2000]
                    elif kind == "robot":
                        self.robot = message if message.get("connected") else None
                    elif kind == "refused":
                        self.refusals.append(message)
                    elif kind == "error":
                        self.errors.append(message)
                    self._changed.notify_all()
        except Exception:  # the connection closed: the reader ends
            pass

    def send(self, signals: tuple[str, ...] = (), action: list[float] | None = None) -> int:
        """One command; returns its seq."""
        self.seq += 1
        command: dict = {"type": "command", "seq": self.seq, "signals": list(signals)}
        if action is not None:
            command["action"] = [float(v) for v in action]
        self.ws.send(json.dumps(command))
        return self.seq

    def wait(self, condition: Callable[[TakeoverClient], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not condition(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; errors {self.errors}")
                self._changed.wait(min(left, 0.5))

    def latest(self) -> dict | None:
        with self._changed:
            return self.views[-1] if self.views else None

    def close(self) -> None:
        self.ws.close()
        self._reader.join(timeout=5)
