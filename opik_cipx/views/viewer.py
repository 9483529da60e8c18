"""The viewer listener: the dashboard's pages (views/dashboard.py) on the viewer port.

Served by the daemon on 127.0.0.1 only, to a loopback Host header (`LoopbackHandler`), and only
to a browser signed in (`access.py`); a request that is not is refused 403 and
counted in `requests_refused`, as every listener's refusals are. Pages are rendered from the ledger and the
capture store; they carry no script, and the Content-Security-Policy forbids loading anything
from anywhere.
"""

from collections.abc import Iterable

from opik_cipx.views.access import ViewerAccess
from opik_cipx.views.dashboard import Dashboard
from opik_cipx.wire.connections import count_refusal
from opik_cipx.wire.loopback import LoopbackHandler

CSP = ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")


class ViewerHandler(LoopbackHandler):
    pages: Dashboard  # set on the subclass the daemon builds, like `access`
    access: ViewerAccess

    def do_GET(self) -> None:
        answer = self.access.check(self.path, self.headers, self.server.port)
        if answer is not None:
            if answer.status >= 400:  # not signed in, or a spent link: a refusal like any other listener's
                count_refusal(self.server.counters, self.server.name, answer.status, "a request not signed in",
                              "no valid viewer cookie or sign-in link")
            self._send(answer.status, answer.content_type, answer.body, answer.headers)
            return
        self._send(*self.pages.route(self.path))

    def _send(self, status: int, content_type: str, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_whole(status, content_type, body, [*headers, CSP])
