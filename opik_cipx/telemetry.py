"""Opt-in error reports: the daemon's unexpected exceptions, sent to Sentry as envelopes.

Off unless a Sentry DSN is set (`CIPX_SENTRY_DSN`, or `telemetry.sentry_dsn` in config.toml);
`CIPX_SENTRY=off` (`telemetry.sentry = false`) keeps it off even then. `describe` gives the
words `opik-cipx status` shows; README and the skill say the same.

An unexpected exception is one the daemon logs with its traceback at ERROR or above: a panic
the gateway recovered, a pipeline (materializer) stage that failed, a listener or worker error,
a thread that died, a crash at startup. `start` hangs a handler on the `opik_cipx` logger; on
the thread that logged, it walks the traceback into an event (no I/O, no locks held while
sending) and queues it. One sender thread (`cipx-telemetry`, a `worker.Worker`) posts each
event as a Sentry envelope over urllib (`outbound.opener`). Never on the wire's way: the queue
is bounded (full: dropped, counted), the same error is reported at most once per `REPEAT_S`,
at most `BURST` reports go out at once and one more every `REFILL_S`; a failed post is retried
`len(RETRY_WAITS_S)` times, then dropped; a 429 silences reports for its `Retry-After`
(seconds or an HTTP-date, `outbound.requested_wait_s`); `stop` waits a bounded time and the
thread never keeps the process alive.

What a report holds, and nothing else (`build_event`): the exception's type (and those it was
raised from), its stack frames as module, function and line number (a file name only for our
own modules, relative to the package), the name of the logger that reported it, opik-cipx's
version, the OS name and kernel release, and the Python implementation and version. Never a
message (an exception's text can carry a prompt, a path or a key; an OSError gives only its
errno name such as ENOSPC), a local variable, a body, a header, a path outside the package, a
host name, a user name or an environment value.
"""

import errno
import json
import logging
import re
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from opik_cipx import __version__
from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import SentryDsn, Settings, parse_sentry_dsn
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.worker import Worker

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing; type checkers take it as True
if TYPE_CHECKING:
    from opik_cipx.outbound import Headers

log = logging.getLogger(__name__)

PACKAGE = "opik_cipx"
QUEUE_MAX = 16
REPEAT_S = 3600.0  # the same error (type and our frames) is reported at most once per hour
BURST = 5  # reports that may go out back to back ...
REFILL_S = 600.0  # ... then one more per this many seconds
RETRY_WAITS_S = (2.0, 10.0)  # a failed post is tried again after these waits, then dropped
REQUEST_TIMEOUT_S = 5.0
RETRY_AFTER_DEFAULT_S = 60.0
RETRY_AFTER_MAX_S = 3600.0
MAX_FRAMES = 50
MAX_CHAIN = 5
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

# The words `status` shows; docs/TELEMETRY.md quotes them (tests/test_telemetry.py keeps them equal).
OFF_SWITCH = "off (CIPX_SENTRY=off)"
OPT_IN = "off (opt-in: set CIPX_SENTRY_DSN to send error reports)"
ON = "on (CIPX_SENTRY_DSN: error reports go to {host}; CIPX_SENTRY=off stops them)"


def destination(settings: Settings) -> tuple[SentryDsn | None, str]:
    """Where reports go (None: nowhere), and why in `status`'s words; the DSN is parsed here only
    (config validated it when it loaded the settings)."""
    if not settings.telemetry_sentry:
        return None, OFF_SWITCH
    if not settings.telemetry_sentry_dsn:
        return None, OPT_IN
    dsn = parse_sentry_dsn(settings.telemetry_sentry_dsn)
    return dsn, ON.format(host=dsn.host)


def describe(settings: Settings) -> tuple[bool, str]:
    """(enabled, the reason in `status`'s words) for these settings."""
    dsn, reason = destination(settings)
    return dsn is not None, reason


def _module_of(frame: Any) -> str:
    name = frame.f_globals.get("__name__")
    return name if isinstance(name, str) and _MODULE_NAME.fullmatch(name) else "<unknown>"


def _frames(tb: TracebackType | None) -> list[dict[str, Any]]:
    """Oldest first, as Sentry wants them: module, function, line; a relative file name for ours."""
    out = []
    while tb is not None:
        code = tb.tb_frame.f_code
        module = _module_of(tb.tb_frame)
        frame: dict[str, Any] = {"module": module, "function": code.co_qualname, "lineno": tb.tb_lineno,
                                 "in_app": module == PACKAGE or module.startswith(PACKAGE + ".")}
        if frame["in_app"]:
            is_package = code.co_filename.endswith("__init__.py")
            frame["filename"] = module.replace(".", "/") + ("/__init__.py" if is_package else ".py")
        out.append(frame)
        tb = tb.tb_next
    return out[-MAX_FRAMES:]


def _chain(exc: BaseException | None) -> list[BaseException]:
    """`exc` and the exceptions it was raised from or during, oldest first (bounded)."""
    out: list[BaseException] = []
    while exc is not None and len(out) < MAX_CHAIN and all(exc is not seen for seen in out):
        out.append(exc)
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    return out[::-1]


def build_event(exc: BaseException, where: str, environment: dict[str, Any], now: float) -> dict[str, Any]:
    """The Sentry event for `exc`, reported by logger `where`: see the module docstring for what it holds."""
    values = []
    for link in _chain(exc):
        value: dict[str, Any] = {"type": type(link).__qualname__, "module": type(link).__module__,
                                 "stacktrace": {"frames": _frames(link.__traceback__)},
                                 "mechanism": {"type": "logging", "handled": True}}
        if isinstance(link, OSError) and link.errno is not None and link.errno in errno.errorcode:
            value["value"] = errno.errorcode[link.errno]
        values.append(value)
    import uuid  # only with a DSN: uuid (and platform) cost each daemon process's start

    return {
        "event_id": uuid.uuid4().hex,
        "timestamp": now,
        "platform": "python",
        "level": "error",
        "logger": where if _MODULE_NAME.fullmatch(where) else "<unknown>",
        "release": f"opik-cipx@{__version__}",
        "sdk": {"name": "opik-cipx", "version": __version__},
        "contexts": environment,
        "exception": {"values": values},
    }


def fingerprint(event: dict[str, Any]) -> tuple:
    """What makes two reports the same error: where, the types, and our own frames."""
    return (event["logger"], *(
        (value["type"], *((f["module"], f["function"], f["lineno"]) for f in value["stacktrace"]["frames"]
                          if f["in_app"]))
        for value in event["exception"]["values"]))


def envelope(event: dict[str, Any], sent_at: float) -> bytes:
    """One event as a Sentry envelope: envelope header, item header, payload, one JSON line each."""
    payload = json.dumps(event, separators=(",", ":")).encode()
    head = {"event_id": event["event_id"], "sent_at": utc_iso(sent_at), "sdk": event["sdk"]}
    item = {"type": "event", "length": len(payload), "content_type": "application/json"}
    return b"\n".join((json.dumps(head).encode(), json.dumps(item).encode(), payload)) + b"\n"


def runtime_environment() -> dict[str, Any]:
    """The `contexts` of every report: OS name and release, Python implementation and version."""
    import platform

    return {"os": {"name": platform.system(), "version": platform.release()},
            "runtime": {"name": platform.python_implementation(), "version": platform.python_version()}}


@dataclass
class _Tally:
    sent: int = 0
    dropped: int = 0  # queue full, refused, failed after retries, or while Sentry asked us to wait
    suppressed: int = 0  # repeats of a reported error, or over our own rate limit
    last_error: str | None = None


class Reporter(Worker):
    """The daemon's error reporter: a logging handler, a bounded queue and the sender thread."""

    def __init__(self, settings: Settings, counters: Counters | None = None, clock: Clock = SYSTEM):
        super().__init__("telemetry", counters or Counters(), log, clock)
        self.dsn, self.reason = destination(settings)
        self.enabled = self.dsn is not None
        self._opener = None
        if self.dsn:
            from opik_cipx.outbound import opener  # urllib.request: loaded only by a daemon that reports

            self._opener = opener(self.dsn.envelope_url)
        self._lock = threading.Lock()
        self._tally = _Tally()
        self._seen: dict[tuple, float] = {}
        self._tokens, self._refilled = float(BURST), clock.monotonic()
        self._silent_until = float("-inf")
        self._handler = _Handler(self)
        self._environment: dict[str, Any] = {}

    def start(self) -> None:
        """Begin reporting what the `opik_cipx` logger logs with a traceback (no-op when off)."""
        if self.enabled:
            self._environment = runtime_environment()
            super().start()
            logging.getLogger(PACKAGE).addHandler(self._handler)

    def stop(self, timeout_s: float) -> bool:
        """Stop reporting; give queued reports at most `timeout_s` to go out (no retries meanwhile)."""
        logging.getLogger(PACKAGE).removeHandler(self._handler)
        return super().stop(timeout_s)

    def capture(self, exc: BaseException, where: str) -> None:
        """Queue a report of `exc`, unless it repeats one, is over the rate limit or the queue is full.

        Runs on the thread that logged `exc`: never raises, never waits.
        """
        try:
            event = build_event(exc, where, self._environment, self.clock.time())
            key, now = fingerprint(event), self.clock.monotonic()
        except Exception:  # noqa: BLE001 - a report must never break the code that logged
            self._count("dropped")
            return
        with self._lock:
            if now - self._seen.get(key, float("-inf")) < REPEAT_S or not self._take_token(now):
                self._tally.suppressed += 1
                return
            self._seen = {seen: at for seen, at in self._seen.items() if now - at < REPEAT_S}
            self._seen[key] = now
        if not self.put(event, limit=QUEUE_MAX):
            self._count("dropped")

    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self._tally, name, getattr(self._tally, name) + 1)

    def _take_token(self, now: float) -> bool:
        self._tokens = min(float(BURST), self._tokens + (now - self._refilled) / REFILL_S)
        self._refilled = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def section(self) -> dict[str, Any]:
        """The `telemetry` section of the admin stats."""
        with self._lock:
            tally = self._tally
            return {"enabled": self.enabled, "reason": self.reason, "sent": tally.sent, "dropped": tally.dropped,
                    "suppressed": tally.suppressed, "last_error": tally.last_error}

    def step(self, event: dict[str, Any] | None) -> None:
        if event is not None:
            self._deliver(event)

    def _deliver(self, event: dict[str, Any]) -> None:
        for wait_s in (*RETRY_WAITS_S, None):
            if self.clock.monotonic() < self._silent_until:
                break
            status, error, retry_after = self._post(envelope(event, self.clock.time()))
            if status is not None and 200 <= status < 300:
                with self._lock:
                    self._tally.sent += 1
                    self._tally.last_error = None
                return
            with self._lock:
                self._tally.last_error = error
            if status == 429:
                self._silent_until = self.clock.monotonic() + retry_after
                break
            if status is not None and 400 <= status < 500:
                break  # the DSN or the event is refused: sending it again changes nothing
            if wait_s is None or self.rest(wait_s):
                break  # no retries once stopping
        self._count("dropped")

    def _post(self, body: bytes) -> tuple[int | None, str | None, float]:
        """(status, one-line error, seconds Sentry asks us to wait) of posting one envelope."""
        import urllib.error
        import urllib.request

        assert self.dsn is not None and self._opener is not None
        request = urllib.request.Request(self.dsn.envelope_url, data=body, method="POST", headers={
            "Content-Type": "application/x-sentry-envelope",
            "User-Agent": f"opik-cipx/{__version__}",
            "X-Sentry-Auth": f"Sentry sentry_version=7, sentry_client=opik-cipx/{__version__}, "
                             f"sentry_key={self.dsn.public_key}",
        })
        try:
            with self._opener.open(request, timeout=REQUEST_TIMEOUT_S) as resp:
                resp.read()
                return resp.status, None, 0.0
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, f"Sentry answered HTTP {exc.code}", self._retry_after(exc.headers)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            return None, f"cannot reach Sentry at {self.dsn.host}: {type(exc).__name__}: {reason}"[:300], 0.0

    def _retry_after(self, headers: "Headers") -> float:
        from opik_cipx.outbound import requested_wait_s  # loaded with the opener, in `__init__`

        wait = requested_wait_s(headers, self.clock.time())
        return RETRY_AFTER_DEFAULT_S if wait is None else min(max(wait, 1.0), RETRY_AFTER_MAX_S)


class _Handler(logging.Handler):
    """Hands every record logged with an exception at ERROR or above to the reporter."""

    def __init__(self, reporter: Reporter):
        super().__init__(logging.ERROR)
        self.reporter = reporter

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            self.reporter.capture(exc, record.name)


def start(settings: Settings, counters: Counters | None = None, clock: Clock = SYSTEM) -> Reporter:
    """The daemon's reporter, reporting already when `settings` opt in."""
    reporter = Reporter(settings, counters, clock)
    reporter.start()
    return reporter
