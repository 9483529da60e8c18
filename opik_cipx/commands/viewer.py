"""`opik-cipx viewer [--open]`: print (and open) the URL of the daemon's dashboard (views/dashboard.py)."""

import argparse
import sys
import webbrowser

from opik_cipx.config import Settings
from opik_cipx.control.daemon_control import is_healthy, listener_port, read_state


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--open", action="store_true", help="also open it in the default browser")


def run(args: argparse.Namespace, settings: Settings) -> int:
    state = read_state(settings)
    port = listener_port(settings, state, "viewer")
    if port is None:
        print("opik-cipx: no viewer port yet: the daemon has never started. Run `opik-cipx sync`.", file=sys.stderr)
        return 1
    url = f"http://127.0.0.1:{port}/"
    print(url)
    if not is_healthy(listener_port(settings, state, "admin")):
        print("opik-cipx: the daemon is not running, so the viewer will not answer. Run `opik-cipx sync`.",
              file=sys.stderr)
        return 1
    if args.open and not webbrowser.open(url):
        print("opik-cipx: could not launch a browser here; open the URL above yourself.", file=sys.stderr)
    return 0
