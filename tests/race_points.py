"""`python -m tests.race_points <opik-cipx arguments>`: opik-cipx that tells a race test where it is.

For tests that make a race certain instead of likely: the test passes down the write end of a
pipe (`RACE_SIGNALS`, a file descriptor) and this process writes a word on it, once each:
- `paused`: with `RACE_PAUSE=<module>:<function>` (a module-level function of the package, looked
  up by its callers when they call it), its first call wrote this and waits, before it runs, for
  a byte on `RACE_GO` (the read end of another pipe) that the test writes when it is ready;
- `waits`: a `flock` this process asked for without blocking was held by another process (a
  command polling `sync.lock`, say), so it now waits for that one;
- `done`: it is about to exit.
Anything else runs opik-cipx unchanged.
"""

import atexit
import fcntl
import functools
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

from opik_cipx.cli import main

_said: set[str] = set()


def say(word: str) -> None:
    """Write `word` on the signals pipe, the first time only."""
    if word not in _said and os.environ.get("RACE_SIGNALS"):
        _said.add(word)
        os.write(int(os.environ["RACE_SIGNALS"]), f"{word}\n".encode())


def paused(function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if "paused" not in _said:
            say("paused")
            os.read(int(os.environ["RACE_GO"]), 1)
        return function(*args, **kwargs)
    return wrapper


def telling_flock(fd: Any, operation: int) -> None:
    try:
        _flock(fd, operation)
    except BlockingIOError:
        say("waits")
        raise


_flock = fcntl.flock

if __name__ == "__main__":
    fcntl.flock = telling_flock
    if os.environ.get("RACE_PAUSE"):
        module_name, _, name = os.environ["RACE_PAUSE"].partition(":")
        module = importlib.import_module(module_name)
        setattr(module, name, paused(getattr(module, name)))
    atexit.register(say, "done")
    sys.exit(main())
