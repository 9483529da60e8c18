"""Run a piece of a test in a time zone of its choice (local days, weeks and months move with it)."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime


@contextmanager
def in_zone(name: str) -> Iterator[None]:
    """`TZ=name` for the block (one with summer time shows the 23- and 25-hour days), then the machine's again."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = name
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def local_ns(*fields: int) -> int:
    """Epoch ns of a local date and time (year, month, day[, hour, minute, second])."""
    return int(datetime(*fields).timestamp()) * 10**9
