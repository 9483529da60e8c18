"""The requests the daemon itself sends (to Opik, to Sentry): how they are opened, and how long
an answer asks us to wait.

`opener(url)` never follows a redirect (a redirected POST would lose its body: the 3xx is
reported instead) and never sends a loopback destination through a proxy from the environment.
`requested_wait_s` reads `RateLimit-Reset`, else `Retry-After`: a delay in seconds, an epoch
timestamp, or an HTTP-date; the caller bounds it.
"""

import math
import urllib.parse
import urllib.request
from collections.abc import Mapping
from email.message import Message
from email.utils import parsedate_to_datetime

from opik_cipx.config import is_loopback_host

EPOCH_AFTER = 1e9  # a value above this is a timestamp rather than a delay (2001-09-09)
# An answer's headers: urllib's (an email Message) or a plain mapping.
Headers = Mapping[str, str] | Message


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def opener(url: str) -> urllib.request.OpenerDirector:
    """An opener for requests to `url`: no redirects; no proxy for a loopback host."""
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if is_loopback_host(urllib.parse.urlsplit(url).hostname or ""):
        handlers.append(urllib.request.ProxyHandler({}))
    return urllib.request.build_opener(*handlers)


def requested_wait_s(headers: Headers, now: float) -> float | None:
    """Seconds an answer asks us to wait (`now`: epoch seconds), from `RateLimit-Reset`, else
    `Retry-After`; None when neither says anything usable. Not bounded: may be 0 or negative."""
    for name in ("RateLimit-Reset", "Retry-After"):
        raw = (headers.get(name) or "").strip()
        if not raw:
            continue
        try:
            value = float(raw)
            if math.isnan(value):
                continue
        except ValueError:
            try:
                return parsedate_to_datetime(raw).timestamp() - now
            except (TypeError, ValueError):
                continue
        return value - now if value > EPOCH_AFTER else value
    return None
