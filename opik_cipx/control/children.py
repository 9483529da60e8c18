"""What the processes that run a child share: the listening socket a supervisor hands its daemon
(`inherited_listener`), when a child that died is started again (`restart_delay`), how its end is
said (`describe_exit`).

The detached supervisor (control/detached.py) runs the daemon, the wire process runs the work
process (control/work_process.py), `status` describes the supervisor (control/supervisor.py).
Kept apart from the supervisor, so the wire and the work process do not load its modules for it
(docs/ARCHITECTURE.md, "Imports at start").
"""

import os
import signal
import socket
from collections.abc import MutableMapping

from opik_cipx.config import LOOPBACK_HOST

LISTEN_FD_ENV = "CIPX_LISTEN_FD"
MAX_DEATHS = 5  # deaths within WINDOW_S that make the supervisor give up (systemd's unit: the same)
WINDOW_S = 120.0
MAX_DELAY_S = 1.0


def restart_delay(deaths: list[float], now: float) -> float | None:
    """Seconds to wait before starting the daemon again, or None to give up.

    `deaths`: monotonic times at which the daemon died, the latest included. The first death
    within `WINDOW_S` restarts at once, the next ones after 0.25, 0.5, 1 s; the `MAX_DEATHS`th gives up.
    """
    recent = sum(1 for at in deaths if now - at < WINDOW_S)
    if recent >= MAX_DEATHS:
        return None
    return 0.0 if recent <= 1 else min(0.25 * 2 ** (recent - 2), MAX_DELAY_S)


def describe_exit(returncode: int) -> str:
    """How a daemon ended, as `status` shows it: `killed by SIGKILL` or `exited with status 1`."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


def inherited_listener(env: MutableMapping[str, str] | None = None) -> socket.socket | None:
    """The listening socket a supervisor handed to this daemon (`CIPX_LISTEN_FD` in `env`, by default
    this process's environment), or None.

    The variable is removed from `env`, so nothing the daemon starts inherits it. Only a TCP
    socket listening on 127.0.0.1 is taken; anything else is closed and ignored.
    """
    raw = (os.environ if env is None else env).pop(LISTEN_FD_ENV, "")
    if not raw.isdigit():
        return None
    try:
        sock = socket.socket(fileno=int(raw))
    except OSError:
        return None
    try:
        if (sock.family == socket.AF_INET and sock.type == socket.SOCK_STREAM
                and sock.getsockname()[0] == LOOPBACK_HOST
                and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
            return sock
    except OSError:
        pass
    sock.close()
    return None
