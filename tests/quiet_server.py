"""The fake servers' `ThreadingHTTPServer`: a client that hangs up is no error worth a traceback.

Tests hang up on purpose (a slow Opik, a daemon killed mid-request). The stdlib prints a
traceback for each, from the server's thread, and on Python 3.11 formatting a traceback parses
source with `ast`, which is not safe next to another thread's `ast.parse` (CPython gh-106905: a
`SystemError: AST constructor recursion depth mismatch` in whatever test parses at that moment).
"""

import sys
from http.server import ThreadingHTTPServer
from typing import Any


class QuietThreadingHTTPServer(ThreadingHTTPServer):
    """Serves each request on a daemon thread; a client's hang-up ends its request silently."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a reset, a broken pipe, a TLS hang-up
            super().handle_error(request, client_address)
