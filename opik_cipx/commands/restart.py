"""`opik-cipx restart`: stop the daemon and start it again from the executable on disk.

The old daemon gets its full `drain_timeout_s` to finish in-flight calls. The supervisor unit
is refreshed on the way. If the new daemon does not come up healthy, Claude Code is pointed
straight at Anthropic again (fail open) and the exit status is 1.
"""

import argparse
import os
import sys

from opik_cipx.config import Settings
from opik_cipx.control import lifecycle


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(writes_home=True)


def run(args: argparse.Namespace, settings: Settings) -> int:
    if settings.disabled:
        print("opik-cipx: disabled (CIPX_DISABLED); nothing to restart. Unset it, then run `opik-cipx sync`.",
              file=sys.stderr)
        return 1
    return lifecycle.bring_up_and_report(settings, dict(os.environ), restart=True, stop_timeout_s=None)
