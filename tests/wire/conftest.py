"""The gateway in this process, assembled as the daemon assembles it, for the wire's tests.

`InProcessWire` is a `LoopbackServer` serving `GatewayHandler` on a port the system assigns, with
the real `UpstreamPool` (TLS, the test CA) and the daemon's client limits (or the test's): real sockets end to end,
no subprocess. What the tee would take is kept in `captures`, in order, with the counters; the
capture log, the materializer and the rest of the daemon are not there (a daemon test checks what
reaches the capture log and the log file).
"""

import threading

import pytest

from opik_cipx.stats import Counters
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.connections import Limits
from opik_cipx.wire.gateway import RESPONSE_KEEP_BYTES, Gateway, GatewayHandler
from opik_cipx.wire.loopback import LoopbackServer
from opik_cipx.wire.upstream import UpstreamPool
from tests.conftest import LIMITS
from tests.fake_anthropic import CA_BUNDLE


class InProcessWire:
    def __init__(self, upstream_url: str, ca_bundle: str = CA_BUNDLE, proxy_url: str = "", limits: Limits = LIMITS,
                 response_keep_bytes: int = RESPONSE_KEEP_BYTES):
        self.counters = Counters()
        self.captures: list[Capture] = []
        self.pool = UpstreamPool(upstream_url, proxy_url, ca_bundle)
        self.gateway = Gateway(self.pool, self.captures.append, self.counters, response_keep_bytes)
        handler = type("Handler", (GatewayHandler,), {"gateway": self.gateway})
        self.server = LoopbackServer("claude_code", "127.0.0.1", 0, handler, limits, self.counters)
        self.port = self.server.port
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def counter(self, name: str) -> int:
        return self.counters.get(name)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.gateway.wait_idle(5)
        self.gateway.close()
        self.pool.close()


@pytest.fixture
def wire(upstream):
    """The gateway in process, forwarding to the `upstream` fake."""
    served = InProcessWire(upstream.url)
    yield served
    served.close()
