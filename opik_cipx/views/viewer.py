"""The viewer listener: the dashboard's pages (views/dashboard.py) on the viewer port.

Served by the daemon on 127.0.0.1 only, and only to a loopback Host header. Pages are
rendered from the ledger and the capture store; they carry no script, and the
Content-Security-Policy forbids loading anything from anywhere.
"""

from http.server import BaseHTTPRequestHandler

from opik_cipx.views.dashboard import Dashboard
from opik_cipx.wire.loopback import host_is_loopback


class ViewerHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pages: Dashboard  # set on the subclass the daemon builds

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        if not host_is_loopback(self.headers.get("Host")):
            self._send(403, "text/plain", b"opik-cipx viewer answers only to a loopback Host header\n")
            return
        self._send(*self.pages.route(self.path))

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)
