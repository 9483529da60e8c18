"""The gateway log, `logs/cipx.log`: rotated by size, owner-only, never bodies or secrets.

Only the daemon logs to the file. Call sites pass ids, routes, counts and error classes;
no code path logs a request or response body or a header value.

A disk that refuses the log never stops the daemon: when the file cannot be opened, INFO and
above go to stderr instead (the supervisor keeps it) and `DaemonLog.retry` attaches the file
once it can; a write that fails (disk full) is dropped quietly, not printed as a traceback.
"""

import logging
import logging.handlers
import sys
import threading
from pathlib import Path

from opik_cipx.home import FILE_MODE, private_dir

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Private(logging.FileHandler):
    """A file handler whose file is the owner's alone and that remembers why its last write failed."""

    failure: str | None = None  # why the last write failed

    def _open(self):
        stream = super()._open()
        Path(self.baseFilename).chmod(FILE_MODE)
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        self.failure = None
        super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        self.failure = getattr(exc, "strerror", None) or type(exc).__name__


class _PrivateRotatingHandler(_Private, logging.handlers.RotatingFileHandler):
    """Appends to the log and rotates it."""


class _PrivateWatchedHandler(_Private, logging.handlers.WatchedFileHandler):
    """Appends to the log another process rotates, opening it again once it was rotated."""


class DaemonLog:
    """The daemon's logging: INFO+ (DEBUG+ with `debug`) to `logs_dir/cipx.log`, WARNING+ also to
    stderr, and a thread that dies of an exception as an error with its traceback. The wire process
    rotates the file; the work process (`rotate=False`) appends to it, each line one write, and
    follows it across a rotation."""

    def __init__(self, logs_dir: Path, max_bytes: int, backups: int, debug: bool = False, rotate: bool = True):
        self.path = logs_dir / "cipx.log"
        self._max_bytes, self._backups, self._rotate = max_bytes, backups, rotate
        self._root = logging.getLogger("opik_cipx")
        self._root.setLevel(logging.DEBUG if debug else logging.INFO)
        for handler in list(self._root.handlers):
            self._root.removeHandler(handler)
            handler.close()
        self._stderr = logging.StreamHandler(sys.stderr)
        self._stderr.setFormatter(logging.Formatter("opik-cipx: %(levelname)s %(message)s"))
        self._root.addHandler(self._stderr)
        self._root.propagate = False
        self._file: _PrivateRotatingHandler | _PrivateWatchedHandler | None = None
        self._open_error: str | None = None
        threading.excepthook = _log_thread_death
        self.retry()

    def retry(self) -> None:
        """Attach the log file if it is not attached yet (the disk may have recovered)."""
        if self._file is not None:
            return
        try:
            private_dir(self.path.parent)
            handler: _PrivateRotatingHandler | _PrivateWatchedHandler = (
                _PrivateRotatingHandler(self.path, maxBytes=self._max_bytes, backupCount=self._backups,
                                        encoding="utf-8")
                if self._rotate else _PrivateWatchedHandler(self.path, encoding="utf-8"))
        except OSError as exc:
            self._open_error = exc.strerror or type(exc).__name__
            self._stderr.setLevel(logging.INFO)
            return
        handler.setFormatter(logging.Formatter(FORMAT))
        self._root.addHandler(handler)
        self._file, self._open_error = handler, None
        self._stderr.setLevel(logging.WARNING)

    @property
    def problem(self) -> str | None:
        """Why the log file is not being written, or None."""
        if self._open_error:
            return f"cannot open logs/{self.path.name} ({self._open_error}): logging to stderr"
        if self._file is not None and self._file.failure:
            return f"cannot write logs/{self.path.name} ({self._file.failure}): log lines are lost"
        return None


def _log_thread_death(args: threading.ExceptHookArgs) -> None:
    """A thread that dies of an exception is logged with its traceback (and so reported)."""
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("opik_cipx").error("thread %s died", name, exc_info=args.exc_value)
