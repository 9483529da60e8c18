"""Who may read the viewer: whoever can read `$CIPX_HOME/viewer.token` (0600), as with Jupyter.

The viewer shows prompts and answers, so a loopback port is not enough: every other user of the
machine can connect to it. `opik-cipx viewer` prints (and opens) a URL carrying the token once,
`/?token=...`; that request sets an HttpOnly, SameSite=Strict cookie holding the token and sends
the browser on to the same URL without it. Every later request must bring the cookie; anything
else gets a 403 saying what to run. Tokens are compared in constant time.

The onward step is a page that navigates itself (meta refresh), not a 30x: a browser does not
send a SameSite=Strict cookie on a redirect that a link on another site started (a token URL
clicked in a chat app), while a navigation our own page starts is same-site.
"""

import hmac
import html
import re
import secrets
import urllib.parse
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

TOKEN_FILE = "viewer.token"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{32,128}")
DENIED = "opik-cipx viewer: this page needs the viewer token. Run `opik-cipx viewer` and open the URL it prints.\n"


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


def viewer_url(port: int, token: str) -> str:
    """The sign-in URL `opik-cipx viewer` prints."""
    return f"http://127.0.0.1:{port}/?token={token}"


@dataclass
class Answer:
    """What the viewer sends instead of the page asked for."""

    status: int
    content_type: str
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


class ViewerAccess:
    """Checks each viewer request against the token; one per daemon."""

    def __init__(self, token: str):
        self._token = token.encode("ascii")

    def check(self, target: str, headers: Message, port: int) -> Answer | None:
        """None when the request may be answered; else the answer to send (sign-in page or 403)."""
        path, _, query = target.partition("?")
        params = urllib.parse.parse_qsl(query, keep_blank_values=True)
        offered = [value for name, value in params if name == "token"]
        if offered:
            if len(offered) == 1 and self._matches(offered[0]):
                return self._sign_in(path, [(name, value) for name, value in params if name != "token"], port)
            return Answer(403, "text/plain; charset=utf-8", DENIED.encode())
        if any(self._matches(value) for value in _cookie_values(headers, cookie_name(port))):
            return None
        return Answer(403, "text/plain; charset=utf-8", DENIED.encode())

    def _matches(self, offered: str) -> bool:
        return hmac.compare_digest(offered.encode("utf-8", "surrogateescape"), self._token)

    def _sign_in(self, path: str, rest: list[tuple[str, str]], port: int) -> Answer:
        if not path.startswith("/") or path.startswith("//") or "\\" in path:
            path = "/"  # never an onward URL to another host
        clean = path + ("?" + urllib.parse.urlencode(rest) if rest else "")
        cookie = f"{cookie_name(port)}={self._token.decode()}; Path=/; HttpOnly; SameSite=Strict"
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
