"""The viewer listener: the dashboard's pages (views/dashboard.py) on the viewer port.

Served by the daemon on 127.0.0.1 only, to a loopback Host header (`LoopbackHandler`), and only
to a browser signed in (`access.py`); a request that is not is refused 403 and
counted in `requests_refused`, as every listener's refusals are. Pages are rendered from the ledger and the
capture store; they carry no script, and the Content-Security-Policy forbids loading anything
from anywhere.
"""

from __future__ import annotations  # Dashboard is imported at the first page (`DashboardOnDemand`)

import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from opik_cipx.caps import NO_BUDGET, Budget
from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.views.access import ViewerAccess
from opik_cipx.wire.connections import count_refusal
from opik_cipx.wire.loopback import LoopbackHandler

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; type checkers take it as True
if TYPE_CHECKING:
    from opik_cipx.views.dashboard import Dashboard, Response

CSP = ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")


class DashboardOnDemand:
    """The dashboard (`views/dashboard.Dashboard`, same arguments), made at the first page asked
    for: most work processes never show one, and its modules are about an eighth of what the work
    process imports at start (docs/ARCHITECTURE.md, "Imports at start")."""

    def __init__(self, ledger_path: Path, captures_dir: Path, clock: Clock = SYSTEM, budget: Budget = NO_BUDGET,
                 prices: dict[str, dict[str, Any]] | None = None):
        self._args = (ledger_path, captures_dir, clock, budget, prices)
        self._lock = threading.Lock()  # handler threads: one makes it
        self._dashboard: Dashboard | None = None

    def route(self, target: str) -> Response:
        """`Dashboard.route`."""
        if self._dashboard is None:
            with self._lock:
                if self._dashboard is None:
                    from opik_cipx.views.dashboard import Dashboard  # at the first page: see the class

                    self._dashboard = Dashboard(*self._args)
        return self._dashboard.route(target)


class ViewerHandler(LoopbackHandler):
    pages: Dashboard | DashboardOnDemand  # set on the subclass the daemon builds, like `access`
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
