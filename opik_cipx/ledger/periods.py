"""Moments and periods as users type and read them: `7d`, `2h`, ISO dates, local days, weeks.

Days are local calendar days (the machine's time zone when the call was written to the
ledger); weeks are ISO weeks (`2026-W48`, Monday first); months are `2026-11`. A date or time
without an offset is local time; `Z` or `+02:00` say otherwise.
"""

import re
import time
from datetime import date, datetime, timedelta

from opik_cipx.clock import SYSTEM

RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
DATE_ONLY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def parse_moment(raw: str, *, whole_day_end: bool = False, now: float | None = None, flag: str = "--since") -> int:
    """Epoch ns from `2h` / `30m` / `7d` / `1w` (ago) or an ISO date/time.

    With `whole_day_end`, a date alone means the end of that day (the start of the next), so
    `--until 2026-11-24` includes the 24th. Raises argparse.ArgumentTypeError with one line.
    """
    text = raw.strip()
    now = SYSTEM.time() if now is None else now
    match = RELATIVE.match(text)
    if match:
        return int((now - float(match.group(1)) * UNIT_S[match.group(2)]) * 1e9)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        import argparse  # for its error type: the daemon's processes read periods but parse no arguments

        raise argparse.ArgumentTypeError(
            f"cannot read {flag} {raw!r}: use e.g. 2h, 30m, 7d or 2026-11-24T09:00"
        ) from None
    if whole_day_end and DATE_ONLY.match(text):
        moment += timedelta(days=1)
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time
    return int(moment.timestamp() * 1e9)


def parse_since(raw: str) -> int:
    """argparse type of `--since`: the start of the window."""
    return parse_moment(raw)


def parse_until(raw: str) -> int:
    """argparse type of `--until`: the end of the window (exclusive; a date alone includes that day)."""
    return parse_moment(raw, whole_day_end=True, flag="--until")


def local_day(ns: int) -> str:
    """The local calendar day of an epoch-ns moment, `YYYY-MM-DD`."""
    return time.strftime("%Y-%m-%d", time.localtime(ns / 1e9))


def last_day_before(ns: int) -> str:
    """The local day a window ending (exclusive) at `ns` ends on: `--until 2026-11-24` is the
    24th (1 ms before, as float seconds lose a nanosecond)."""
    return local_day(ns - 1_000_000)


def day_start_ns(day: str) -> int:
    """Epoch ns of local midnight at the start of `day`."""
    return int(datetime.fromisoformat(day).astimezone().timestamp() * 1e9)


def week_of(day: str) -> str:
    """The ISO week of a day: `2026-W48`."""
    year, week, _ = date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


def month_of(day: str) -> str:
    return day[:7]
