"""`python -m tests.forced_errors <opik-cipx arguments>`: opik-cipx with a bug planted, for telemetry tests.

`FORCED_ERROR=materializer`: reading (parsing and attributing) a request raises an error whose
message holds the request body and whose frame holds an API key in a local variable. `FORCED_ERROR=startup`:
the daemon crashes while it assembles itself, with `$HOME` in the message. Anything else
runs opik-cipx unchanged.
"""

import os
import sys

from opik_cipx import daemon
from opik_cipx.cli import main
from opik_cipx.materialize.attribution.incremental import RequestReader

PLANTED_KEY = "sk-ant-api03-planted-in-a-local-variable"


def broken_read(self, key, request_body: bytes, *args, **kwargs):
    api_key = PLANTED_KEY  # noqa: F841 - a local the report must not carry
    raise ValueError("cannot attribute " + bytes(request_body).decode("utf-8", "replace")[:2000])


def broken_check_prices(*args, **kwargs):
    raise RuntimeError(f"planted crash at startup under {os.environ.get('HOME')}")


if __name__ == "__main__":
    if os.environ.get("FORCED_ERROR") == "materializer":
        RequestReader.read = broken_read
    elif os.environ.get("FORCED_ERROR") == "startup":
        daemon.check_prices = broken_check_prices
    sys.exit(main())
