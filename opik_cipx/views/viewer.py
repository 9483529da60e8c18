"""The viewer listener: the dashboard's pages (views/dashboard.py) on the viewer port.

Served by the daemon on 127.0.0.1 only, to a loopback Host header (`LoopbackHandler`), and only
to a browser holding the viewer token (`access.py`). Pages are rendered from the ledger and the
capture store; they carry no script, and the Content-Security-Policy forbids loading anything
from anywhere.
"""

from typing import Iterable

from opik_cipx.views.access import ViewerAccess
from opik_cipx.views.dashboard import Dashboard
from opik_cipx.wire.loopback import LoopbackHandler


class ViewerHandler(LoopbackHandler):
    pages: Dashboard  # set on the subclass the daemon builds, like `access`
    access: ViewerAccess

    def do_GET(self) -> None:
        answer = self.access.check(self.path, self.headers, self.server.port)
        if answer is not None:
            self._send(answer.status, answer.content_type, answer.body, answer.headers)
            return
        self._send(*self.pages.route(self.path))

    def _send(self, status: int, content_type: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
        self.end_headers()
        self.wfile.write(body)
