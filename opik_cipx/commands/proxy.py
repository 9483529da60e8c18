"""`opik-cipx proxy`: run the gateway in the foreground (normally started by the supervisor).

The same command, run again by the daemon with the link's end in `CIPX_WORK_FD`, is its work
process (work.py), which `cli` starts before any parser or settings: it takes its settings from
the daemon, so a config file that no longer loads does not stop it.
"""

import argparse

from opik_cipx.config import Settings


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


def run(args: argparse.Namespace, settings: Settings) -> int:
    from opik_cipx.daemon import run_proxy

    return run_proxy(settings, port=args.port)
