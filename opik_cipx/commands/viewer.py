"""`opik-cipx viewer [--open]`: print (and open) the sign-in URL of the daemon's dashboard (views/dashboard.py).

The URL carries the viewer token from `$CIPX_HOME/viewer.token` (see views/access.py): opened
once, it signs the browser in with a cookie and moves on to the URL without the token.
"""

import argparse
import sys
import webbrowser

from opik_cipx.config import Settings
from opik_cipx.control.daemon_control import is_healthy, listener_port, read_state
from opik_cipx.views.access import read_token, token_path, viewer_url


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--open", action="store_true", help="also open it in the default browser")


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
    url = viewer_url(port, token)
    print(url)
    if args.open and not webbrowser.open(url):
        print("opik-cipx: could not launch a browser here; open the URL above yourself.", file=sys.stderr)
    return 0
