"""The admin listener: `GET /admin/stats` (docs/ARCHITECTURE.md, "Admin stats"), `GET /admin/health`
and `GET /admin/state` (the `state.json` handshake, for when the disk refused to store it).

Short-lived commands (`status`, `sync`) read the daemon through it. Requests whose Host
header is not a loopback name are refused (`LoopbackHandler`), so a web page cannot reach it by
DNS rebinding. Any local user can read it: it carries no prompt, no file path, no credential.
"""

import json
from collections.abc import Callable
from typing import Any

from opik_cipx.wire.loopback import LoopbackHandler


class AdminHandler(LoopbackHandler):
    stats: Callable[[], dict[str, Any]]  # set on the subclass the daemon builds, like `state`
    state: Callable[[], dict[str, Any]]

    @classmethod
    def error_document(cls, status: int, message: str) -> tuple[str, bytes]:
        return "application/json", json.dumps({"error": message}).encode() + b"\n"

    def do_GET(self) -> None:
        route = self.path.split("?", 1)[0]
        if route == "/admin/health":
            self._send(200, {"ok": True})
        elif route == "/admin/stats":
            self._send(200, self.stats())
        elif route == "/admin/state":
            self._send(200, self.state())
        else:
            self._send(404, {"error": f"unknown admin path {route}; try /admin/stats or /admin/health"})

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        self.send_whole(status, "application/json", json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n")
