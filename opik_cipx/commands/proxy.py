"""`opik-cipx proxy`: run the gateway in the foreground (normally started by the supervisor).

The same command, run again by the daemon with the link's end in `CIPX_WORK_FD`, is its work
process (work.py): it takes its settings from the daemon, so a config file that no longer loads
does not stop it.
"""

import argparse
import os
import sys

from opik_cipx.config import ConfigError, Settings
from opik_cipx.link import WORK_FD_ENV


def _port(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {raw!r}") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"port out of range: {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=_port,
                        help="Claude Code listener port (default: ports.json, 9909; 0 = any free)")
    parser.set_defaults(on_config_error=on_config_error)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    if WORK_FD_ENV in os.environ:
        from opik_cipx.work import run_work

        return run_work()
    print(f"opik-cipx: {exc}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, settings: Settings) -> int:
    if WORK_FD_ENV in os.environ:
        from opik_cipx.work import run_work

        return run_work()
    from opik_cipx.daemon import run_proxy

    return run_proxy(settings, port=args.port)
