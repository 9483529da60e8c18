"""How the daemon's two processes take signals (docs/LIFECYCLE.md, "Signals"): which ones stop
them, which are ignored, and a thread that acts on them off the main thread.

Apart from daemon.py so the work process (work.py) takes them the same way without importing
the wire (docs/ARCHITECTURE.md, "Imports at start").
"""

import logging
import os
import signal
import threading

# Signals that end a process by default but mean nothing to the daemon: ignored, logged
# (SIGHUP too when the daemon has no terminal). SIGPIPE Python ignores already.
IGNORED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


def has_terminal() -> bool:
    """This process has a controlling terminal: a `proxy` run by hand (a supervised one has none)."""
    try:
        os.close(os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY))
    except OSError:
        return False
    return True


def catch_signals(stop: threading.Event, terminal: bool, log: logging.Logger) -> None:
    """SIGTERM, SIGINT and SIGQUIT set `stop` (drain, then exit 0); so does SIGHUP when the daemon
    has a terminal (it closed). Without one SIGHUP is ignored, as SIGUSR1 and SIGUSR2 always are:
    each logged (docs/LIFECYCLE.md, "Signals") on `log`, the process's own.

    A Python handler runs on the main thread wherever it is, and one that set `stop` there could
    deadlock on the lock the main thread holds inside it; so the signal numbers go through a pipe
    (`signal.set_wakeup_fd`) to a thread that acts on them."""
    draining = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT} | ({signal.SIGHUP} if terminal else set())
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for signum in (*draining, *IGNORED_SIGNALS):
        signal.signal(signum, lambda *_: None)
    signal.set_wakeup_fd(write_fd)

    def relay() -> None:
        while True:
            for number in os.read(read_fd, 64):
                name = signal.Signals(number).name
                if number in draining:
                    log.info("%s received: draining", name)
                    stop.set()
                elif number == signal.SIGHUP:
                    log.info("SIGHUP ignored: this daemon has no terminal to lose (`opik-cipx restart` reloads "
                             "the settings)")
                else:
                    log.info("%s ignored: it means nothing to opik-cipx", name)

    threading.Thread(target=relay, name="cipx-signals", daemon=True).start()
