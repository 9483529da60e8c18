"""`python -m tests.forced_errors <opik-cipx arguments>`: opik-cipx with a bug planted, for telemetry tests.

`FORCED_ERROR=materializer`: reading (parsing and attributing) a request raises an error whose
message holds the request body and whose frame holds an API key in a local variable. `FORCED_ERROR=startup`:
the daemon crashes while it assembles itself, with `$HOME` in the message.
`FORCED_ERROR=slow_attribution`: reading a request whose body holds `SLOW_MARKER` first holds the
GIL in slices of `SLOW_SLICE_S` (each one C call that does not let it go, as a huge body's parse
would, but sleeping: the test measures whose GIL it is, not how busy the machine's cores are)
until the file `release` appears in `$FORCED_SLOW_DIR` (at most `SLOW_MAX_S`), having created
`started` there. `FORCED_ERROR=poison`: the work process dies at once (exit status `POISON_EXIT`)
reading a request whose body holds `POISON_MARKER`. Anything else runs opik-cipx unchanged.
"""

import ctypes
import os
import sys
import time
from pathlib import Path

from opik_cipx import daemon
from opik_cipx.cli import main
from opik_cipx.materialize.attribution.incremental import RequestReader

PLANTED_KEY = "sk-ant-api03-planted-in-a-local-variable"
SLOW_MARKER = b"FORCED-SLOW-ATTRIBUTION"
SLOW_MAX_S = 60.0
SLOW_SLICE_S = 0.1
POISON_MARKER = b"FORCED-POISON-CAPTURE"
POISON_EXIT = 70
read = RequestReader.read


def broken_read(self, key, request_body: bytes, *args, **kwargs):
    api_key = PLANTED_KEY  # noqa: F841 - a local the report must not carry
    raise ValueError("cannot attribute " + bytes(request_body).decode("utf-8", "replace")[:2000])


def slow_read(self, key, request_body: bytes, *args, **kwargs):
    if SLOW_MARKER in bytes(request_body):
        where = Path(os.environ["FORCED_SLOW_DIR"])
        (where / "started").write_text(str(os.getpid()))
        deadline = time.monotonic() + SLOW_MAX_S
        hold = ctypes.PyDLL(None).usleep  # a PyDLL function is called with the GIL held
        while not (where / "release").exists() and time.monotonic() < deadline:
            hold(int(SLOW_SLICE_S * 1e6))
    return read(self, key, request_body, *args, **kwargs)


def poisoned_read(self, key, request_body: bytes, *args, **kwargs):
    if POISON_MARKER in bytes(request_body):
        os._exit(POISON_EXIT)  # as a crash in C would end it: no handler, no log line
    return read(self, key, request_body, *args, **kwargs)


def broken_check_prices(*args, **kwargs):
    raise RuntimeError(f"planted crash at startup under {os.environ.get('HOME')}")


if __name__ == "__main__":
    if os.environ.get("FORCED_ERROR") == "materializer":
        RequestReader.read = broken_read
    elif os.environ.get("FORCED_ERROR") == "slow_attribution":
        RequestReader.read = slow_read
    elif os.environ.get("FORCED_ERROR") == "poison":
        RequestReader.read = poisoned_read
    elif os.environ.get("FORCED_ERROR") == "startup":
        daemon.check_prices = broken_check_prices
    sys.exit(main())
