"""One-time sign-in links to the viewer: `opik-cipx viewer` issues one, the daemon redeems it once.

A link is a random code (`/?signin=<code>`). Issuing it writes `$CIPX_HOME/viewer-links/<sha256
of the code>` (0600, in the owner-only home) holding when it was issued; redeeming it removes
that file, so of any number of requests bringing the same code exactly one gets in: the one
whose unlink succeeded. Nothing else is shared between the command and the daemon, so a link
survives a daemon restart until it is used, and works for one hour at most (`LINK_TTL_S`, on the
machine's clock). The directory holds names derived from the codes, never the codes, and at
most `MAX_LINKS` unused ones (issuing a link removes the expired and the oldest beyond that).

What a redeemed link gives the browser is the viewer's cookie (`views/access.py`), which keeps
working across restarts; the link itself is spent.
"""

import hashlib
import os
import re
import secrets
from pathlib import Path

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.home import open_private, private_dir

LINKS_DIR = "viewer-links"
LINK_TTL_S = 3600
MAX_LINKS = 16
_CODE = re.compile(r"[A-Za-z0-9_-]{32}")
_NAME = re.compile(r"[0-9a-f]{64}")


class SignInLinks:
    """The sign-in links of one home, on one clock."""

    def __init__(self, home: Path, clock: Clock = SYSTEM):
        self.dir = home / LINKS_DIR
        self.clock = clock

    def issue(self) -> str:
        """A new link's code, stored as unused. Raises OSError when the home refuses the file."""
        private_dir(self.dir)
        self._prune(keep=MAX_LINKS - 1)
        code = secrets.token_urlsafe(24)
        with open_private(self.dir / _name(code), os.O_WRONLY | os.O_CREAT | os.O_EXCL) as out:
            out.write(f"{self.clock.time_ns()}\n".encode("ascii"))
        return code

    def redeem(self, code: str) -> bool:
        """True for the first use of an unexpired link; any other use (again, another code, an
        expired link, a file that cannot be removed) is False."""
        if not _CODE.fullmatch(code):
            return False
        path = self.dir / _name(code)
        issued = _issued(path)
        try:
            path.unlink()  # the one request whose unlink succeeds has the link
        except OSError:
            return False
        return issued is not None and self._fresh(issued)

    def _fresh(self, issued_ns: int) -> bool:
        return abs(self.clock.time_ns() - issued_ns) <= LINK_TTL_S * 10**9

    def _prune(self, keep: int) -> None:
        """Remove expired links, then the oldest beyond `keep`."""
        links = []
        for entry in os.scandir(self.dir):
            if not _NAME.fullmatch(entry.name):
                continue
            issued = _issued(Path(entry.path))
            if issued is None or not self._fresh(issued):
                _remove(entry.path)
            else:
                links.append((issued, entry.path))
        for _, path in sorted(links)[:max(0, len(links) - keep)]:
            _remove(path)


def _name(code: str) -> str:
    return hashlib.sha256(code.encode("ascii")).hexdigest()


def _issued(path: Path) -> int | None:
    try:
        with open(path, "rb") as f:
            return int(f.read(32).strip())
    except (OSError, ValueError):
        return None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
