"""Who may read the viewer: whoever can read `$CIPX_HOME` (0700), as with Jupyter.

The viewer shows prompts and answers, so a loopback port is not enough: every other user of the
machine can connect to it. `opik-cipx viewer` prints a one-time sign-in URL, `/?signin=<code>`
(`views/sign_in.py`: it works once, within an hour; `--open` hands the browser a private local
page that forwards it there: a command line is readable by every local user). That request
sets an HttpOnly, SameSite=Strict cookie and sends the browser on to the same URL without the
code. Every later request must bring the cookie; anything else gets a 403 saying what to run: a
spent or expired link, that `opik-cipx viewer` prints a new one. A browser that holds the cookie
and opens a spent link (from its history, say) is simply sent on. Cookies are compared in
constant time.

The cookie is not the token (`$CIPX_HOME/viewer.token`, drawn by the daemon at its first start):
a browser sends the cookies of 127.0.0.1 to every port of it, so any local listener the browser
visits receives it. Its value is an HMAC of the viewer's port keyed by the token
(`cookie_value`): it admits a browser to this port only, and does not give the token away. It is
the same for every sign-in, so a restart signs nobody out; a new token (delete `viewer.token`,
restart) signs everyone out. The token itself opens nothing: it only keys the cookie.

The onward step is a page that navigates itself (meta refresh), not a 30x: a browser does not
send a SameSite=Strict cookie on a redirect that a link on another site started (a sign-in URL
clicked in a chat app), while a navigation our own page starts is same-site.
"""

import base64
import hashlib
import hmac
import html
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from opik_cipx.views.sign_in import SignInLinks

TOKEN_FILE = "viewer.token"
OPEN_FILE = "viewer-open.html"  # the page `viewer --open` hands the browser (holds the sign-in URL)
_COOKIE_LABEL = b"opik-cipx viewer cookie 1\0"  # what the token signs: this, then the port
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")
SIGN_IN = "signin"  # the query parameter of a sign-in link
LEGACY = "token"  # what older versions' links carried (the token itself): refused like a spent link
DENIED = ("opik-cipx viewer: this browser is not signed in. Run `opik-cipx viewer` and open the one-time "
          "sign-in link it prints.\n")
SPENT = ("opik-cipx viewer: this sign-in link was used already or has expired: each link works once, within "
         "an hour. Run `opik-cipx viewer` for a new one.\n")


def token_path(home: Path) -> Path:
    return home / TOKEN_FILE


def new_token() -> str:
    return secrets.token_urlsafe(32)


def read_token(home: Path) -> str | None:
    """The token in `$CIPX_HOME/viewer.token`, or None when it is missing, unreadable or malformed."""
    try:
        text = token_path(home).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if _TOKEN.fullmatch(text) else None


def sign_in_url(port: int, code: str) -> str:
    """The one-time sign-in URL `opik-cipx viewer` prints (`SignInLinks.issue` gives the code)."""
    return f"http://127.0.0.1:{port}/?{SIGN_IN}={code}"


def cookie_value(token: str, port: int) -> str:
    """What the cookie of a browser signed in to the viewer on `port` holds: HMAC-SHA256 of the
    port under the token, URL-safe base64. One-way, so a captured cookie never yields the token."""
    mac = hmac.new(token.encode("ascii"), _COOKIE_LABEL + str(port).encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def forwarding_page(url: str) -> bytes:
    """A local HTML page that sends the browser on to `url` at once (meta refresh, and a link)."""
    target = html.escape(url, quote=True)
    return (f"<!doctype html><meta charset=utf-8><meta name=referrer content=no-referrer>"
            f"<meta http-equiv=refresh content=\"0; url={target}\"><title>opik-cipx viewer</title>"
            f"<p>Opening the opik-cipx dashboard. <a href=\"{target}\">Continue</a></p>\n").encode()


@dataclass
class Answer:
    """What the viewer sends instead of the page asked for."""

    status: int
    content_type: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


class ViewerAccess:
    """Checks each viewer request for the cookie, and redeems sign-in links; one per daemon."""

    def __init__(self, token: str, links: SignInLinks):
        self._token = token.encode("ascii")
        self.links = links

    def check(self, target: str, headers: Message, port: int) -> Answer | None:
        """None when the request may be answered; else the answer to send (sign-in page or 403)."""
        path, _, query = target.partition("?")
        params = urllib.parse.parse_qsl(query, keep_blank_values=True)
        offered = [value for name, value in params if name in (SIGN_IN, LEGACY)]
        signed_in = self._signed_in(headers, port)
        if offered:
            rest = [(name, value) for name, value in params if name not in (SIGN_IN, LEGACY)]
            link = offered[0] if len(offered) == 1 and any(name == SIGN_IN for name, _ in params) else None
            if (link is not None and self.links.redeem(link)) or signed_in:
                return self._sign_in(path, rest, port)
            return Answer(403, "text/plain; charset=utf-8", SPENT.encode())
        return None if signed_in else Answer(403, "text/plain; charset=utf-8", DENIED.encode())

    def _signed_in(self, headers: Message, port: int) -> bool:
        expected = self._cookie(port)
        return any(hmac.compare_digest(value.encode("utf-8", "surrogateescape"), expected)
                   for value in _cookie_values(headers, cookie_name(port)))

    def _cookie(self, port: int) -> bytes:
        return cookie_value(self._token.decode("ascii"), port).encode("ascii")

    def _sign_in(self, path: str, rest: list[tuple[str, str]], port: int) -> Answer:
        if not path.startswith("/") or path.startswith("//") or "\\" in path:
            path = "/"  # never an onward URL to another host
        clean = path + ("?" + urllib.parse.urlencode(rest) if rest else "")
        cookie = f"{cookie_name(port)}={self._cookie(port).decode()}; Path=/; HttpOnly; SameSite=Strict"
        target = html.escape(clean, quote=True)
        body = (f"<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0; url={target}\">"
                f"<title>opik-cipx viewer</title><p>Signed in. <a href=\"{target}\">Continue</a></p>").encode()
        return Answer(200, "text/html; charset=utf-8", body,
                      [("Set-Cookie", cookie), ("Referrer-Policy", "no-referrer")])


def cookie_name(port: int) -> str:
    """Per port: browsers share cookies between all ports of a host."""
    return f"opik-cipx-viewer-{port}"


def _cookie_values(headers: Message, name: str) -> list[str]:
    values = []
    for header in headers.get_all("Cookie") or []:
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key == name:
                values.append(value.strip().strip('"'))
    return values
