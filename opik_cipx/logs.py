"""The gateway log, `logs/cipx.log`: rotated by size, owner-only, never bodies or secrets.

Only the daemon logs to the file. Call sites pass ids, routes, counts and error classes;
no code path logs a request or response body or a header value.
"""

import logging
import logging.handlers
import sys
import threading
from pathlib import Path

from opik_cipx.home import FILE_MODE, private_dir

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _PrivateRotatingHandler(logging.handlers.RotatingFileHandler):
    def _open(self):
        stream = super()._open()
        Path(self.baseFilename).chmod(FILE_MODE)
        return stream


def configure_daemon_logging(logs_dir: Path, max_bytes: int, backups: int, debug: bool = False) -> Path:
    """Log INFO+ (DEBUG+ with `debug`) to `logs_dir/cipx.log`, WARNING+ also to stderr, and a
    thread that dies of an exception as an error with its traceback."""
    private_dir(logs_dir)
    path = logs_dir / "cipx.log"
    root = logging.getLogger("opik_cipx")
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    file_handler = _PrivateRotatingHandler(path, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(file_handler)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    stderr.setFormatter(logging.Formatter("opik-cipx: %(levelname)s %(message)s"))
    root.addHandler(stderr)
    root.propagate = False
    threading.excepthook = _log_thread_death
    return path


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    """A thread that dies of an exception is logged with its traceback (and so reported)."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("opik_cipx").error("thread %s died", name,
                                         exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
