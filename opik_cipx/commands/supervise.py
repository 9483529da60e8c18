"""`opik-cipx supervise`: keep the daemon running without systemd or launchd (control/detached.py).

`sync` starts it, detached, when no user service manager is there; it runs until `sync`,
`restart`, `purge` or `uninstall` stops it. A config file that does not load does not stop it:
its daemon then exits 2, and it gives up and says so.
"""

import argparse
import os

from opik_cipx.config import ConfigError, Settings
from opik_cipx.control import executable
from opik_cipx.control.daemon_control import paths_only_settings
from opik_cipx.control.detached import DetachedSupervisor


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(on_config_error=on_config_error)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    return run(args, paths_only_settings(dict(os.environ)))


def run(args: argparse.Namespace, settings: Settings) -> int:
    exe = executable.current()
    return DetachedSupervisor(settings, exe.proxy_argv(), dict(os.environ)).run()
