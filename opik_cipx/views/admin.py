"""The admin listener: `GET /admin/stats` (docs/ARCHITECTURE.md, "Admin stats") and `GET /admin/health`.

Short-lived commands (`status`, `sync`) read the daemon through it. Requests whose Host
header is not a loopback name are refused, so a web page cannot reach it by DNS rebinding.
"""

import json
import logging
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable

from opik_cipx.wire.loopback import host_is_loopback

log = logging.getLogger(__name__)


class AdminHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stats: Callable[[], dict[str, Any]]  # set on the subclass the daemon builds

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        log.debug("admin: " + format, *args)

    def do_GET(self) -> None:
        if not host_is_loopback(self.headers.get("Host")):
            self._send(403, {"error": "opik-cipx admin answers only to a loopback Host header"})
            return
        route = self.path.split("?", 1)[0]
        if route == "/admin/health":
            self._send(200, {"ok": True})
        elif route == "/admin/stats":
            self._send(200, self.stats())
        else:
            self._send(404, {"error": f"unknown admin path {route}; try /admin/stats or /admin/health"})

    def _send(self, status: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc, indent=2, sort_keys=True).encode() + b"\n"
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)
