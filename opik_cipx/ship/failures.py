"""What a failed request to Opik means for the user: the `last_error` line, whether shipping is
paused, and how long to wait before the same request goes again (the shipper's list, in
`ship/shipper.py`'s docstring). Pure, but for `backoff`, which the shipper counts."""

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from opik_cipx.ship.destination import OPIK_CLOUD_URL, Destination
from opik_cipx.ship.opik_api import TRACES_BATCH, Reply, Route, is_opik_answer, too_slow

if TYPE_CHECKING:
    from opik_cipx.outbound import Headers

AUTH = frozenset({401, 402, 403})
WRONG_URL = frozenset({301, 302, 303, 307, 308, 404, 405})
MIN_WAIT_S = 1.0  # the shortest wait after a 429, whatever RateLimit-Reset / Retry-After say
RATE_LIMIT_MAX_S = 3600.0


@dataclass(frozen=True)
class Failure:
    error: str  # one line for `status` and the log: what happened, what fixes it, when it is tried again
    wait_s: float
    paused: bool  # waiting for the user to fix something (credentials, URL); probed every `auth_probe_s`


def rate_limit_wait_s(headers: "Headers", now: float) -> float | None:
    """Seconds a 429 asks us to wait (`outbound.requested_wait_s`), never less than `MIN_WAIT_S`
    (a 0, a date in the past) nor more than `RATE_LIMIT_MAX_S`; None when the headers say nothing
    usable."""
    from opik_cipx.outbound import requested_wait_s  # loaded with the client's opener: a 429 came through it

    wait = requested_wait_s(headers, now)
    return None if wait is None else min(max(wait, MIN_WAIT_S), RATE_LIMIT_MAX_S)


def describe_failure(reply: Reply, route: Route, records: int, destination: Destination, now: float,
                     auth_probe_s: float, limit: int, timeout_s: float, backoff: Callable[[], float]) -> Failure:
    """`reply` to a request of `records` on `route` failed: what to say and how long to wait.
    `limit` and `timeout_s` are the request size and timeout in force now."""
    status, url = reply.status, destination.display_url
    if status == 429:
        wait = rate_limit_wait_s(reply.headers, now)
        wait = max(MIN_WAIT_S, backoff()) if wait is None else wait
        return Failure(f"Opik rate limit (HTTP 429); waiting {wait:.0f}s", wait, False)
    if status in AUTH:
        what = "device token" if destination.device_token else "credentials"
        hint = ("check OPIK_CIPX_DEVICE_TOKEN / OPIK_CIPX_WORKSPACE" if destination.device_token
                else "check OPIK_CIPX_API_KEY / OPIK_CIPX_WORKSPACE")
        if status == 403 and route is TRACES_BATCH:
            hint += " (a device token may not call the batch endpoint: set it as opik.device_token)"
        return Failure(f"Opik refused the {what} (HTTP {status}) for workspace '{destination.workspace}': {hint}. "
                       f"Shipping is paused and spans stay in the spool; retrying every {auth_probe_s:.0f}s and "
                       "on restart", auth_probe_s, True)
    if status in WRONG_URL:
        return Failure(f"Opik answered HTTP {status} at {url}: {_check_url()}. Shipping is paused; retrying every "
                       f"{auth_probe_s:.0f}s and on restart", auth_probe_s, True)
    if status is not None and 200 <= status < 300 and not is_opik_answer(reply):
        kind = str(reply.headers.get("Content-Type") or "an unknown type").split(";")[0].strip()
        return Failure(f"{url} answered HTTP {status} with {kind}, not Opik's REST API (a web page?), so nothing "
                       f"was stored: {_check_url()}. Shipping is paused; retrying every {auth_probe_s:.0f}s and on "
                       "restart", auth_probe_s, True)
    wait = backoff()
    if too_slow(reply):
        why = "its gateway gave up (HTTP 504)" if status == 504 else f"no answer within {timeout_s:.0f}s"
        return Failure(f"Opik is too slow for {records} record(s) at once ({why}): now at most {limit} record(s) "
                       f"per request, waiting up to {timeout_s:.0f}s; retrying in {wait:.0f}s", wait, False)
    if status is None:
        return Failure(f"cannot reach Opik at {url}: {reply.error}; retrying in {wait:.0f}s", wait, False)
    snippet = reply.body[:200].decode("utf-8", "replace").strip()
    return Failure(f"Opik answered HTTP {status} at {url}: {snippet}; retrying in {wait:.0f}s", wait, False)


def _check_url() -> str:
    return (f"check OPIK_CIPX_BASE_URL (Opik Cloud: {OPIK_CLOUD_URL}, local Opik: http://localhost:5173/api: "
            "the REST API root, not the web page)")
