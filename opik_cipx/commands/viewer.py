"""`opik-cipx viewer [--open]`: print (and open) a new one-time sign-in URL of the daemon's dashboard
(views/dashboard.py).

Each run issues a new link (`views/sign_in.py`): it works once, within an hour, signing the
browser in with a cookie that keeps working (views/access.py); then the browser moves on to the
URL without the link's code.

`--open` never puts the link on a command line (any local user can read those, in
`/proc/<pid>/cmdline` or `ps`): it writes `$CIPX_HOME/viewer-open.html` (0600, in the owner-only
home), a page that forwards the browser to the URL, and opens that file, as Jupyter does.
"""

import argparse
import sys
import webbrowser

from opik_cipx.config import Settings
from opik_cipx.control.daemon_control import is_healthy, listener_port, read_state
from opik_cipx.home import write_atomic
from opik_cipx.views.access import OPEN_FILE, forwarding_page, read_token, sign_in_url, token_path
from opik_cipx.views.sign_in import SignInLinks


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--open", action="store_true", help="also open it in the default browser")
    # reads no setting: runs despite other bad settings (cli.py); writes the link into the home
    parser.set_defaults(config_keys=(), writes_home=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    state = read_state(settings)
    port = listener_port(settings, state, "viewer")
    if port is None:
        print("opik-cipx: no viewer port yet: the daemon has never started. Run `opik-cipx sync`.", file=sys.stderr)
        return 1
    if not is_healthy(listener_port(settings, state, "admin")):
        print("opik-cipx: the daemon is not running, so the viewer will not answer. Run `opik-cipx sync`.",
              file=sys.stderr)
        return 1
    token = read_token(settings.home)
    if token is None:
        print(f"opik-cipx: no viewer token in {token_path(settings.home)}: the daemon could not store it yet "
              "(`opik-cipx status` says why); it is written as soon as the disk takes it.", file=sys.stderr)
        return 1
    try:
        code = SignInLinks(settings.home).issue()
    except OSError as exc:
        print(f"opik-cipx: cannot store a sign-in link in {settings.home} ({exc.strerror or type(exc).__name__}): "
              "free some space or make it writable, then run `opik-cipx viewer` again", file=sys.stderr)
        return 1
    url = sign_in_url(port, code)
    print(url)
    if args.open:
        _open(settings, url)
    return 0


def _open(settings: Settings, url: str) -> None:
    """Open `url` in the default browser through the forwarding page: the link stays off every argv."""
    page = settings.home / OPEN_FILE
    try:
        write_atomic(page, forwarding_page(url))
    except OSError as exc:
        print(f"opik-cipx: cannot write {page} ({exc.strerror or type(exc).__name__}), so no browser was "
              "started (its command line would show the link to other users); open the URL above yourself.",
              file=sys.stderr)
        return
    if not webbrowser.open(page.as_uri()):
        print("opik-cipx: could not launch a browser here; open the URL above yourself.", file=sys.stderr)
