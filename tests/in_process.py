"""An `opik-cipx` command run in the test's own process, for tests about what it prints, its exit
status and the files it leaves, not about processes (docs/DEVELOPING.md, "Tests": which to use).

`run_in_process(argv, env, input, cwd)` answers as `subprocess.run([python, "-m", "opik_cipx",
*argv], env=env, input=input, cwd=cwd, capture_output=True, text=True)` would: `os.environ` is
`env` for the call (the local time zone follows its `TZ`), the working directory is `cwd`, stdin
holds `input` (empty when None, as /dev/null), stdout and stderr are pipes of their own (not
terminals: no colours, argparse at 80 columns), written through text streams encoded as the
interpreter's own (`sys.stdout.buffer` exists), decoded as `subprocess` decodes them; the package
logs as in a fresh interpreter; `SystemExit` becomes the return code as the interpreter makes it.
An exception the command does not catch is raised into the test (a subprocess would print it and
exit 1: a test about a traceback runs a subprocess). Everything is put back afterwards: the
environment, the time zone, the working directory, the standard streams, logging. These are the
process's for the call: a thread of the test that prints meanwhile (the fakes' servers print
nothing) would print into the command's output.

What a command must not leave in a long-lived process fails the call instead of leaking into the
next test: a thread it started still running (a thread started by one it started too), a changed
signal handler, logging setup, excepthook, working directory, umask, GIL switch interval or frozen
garbage collection.
"""

import contextlib
import gc
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from opik_cipx.cli import main

ENCODING = "utf-8"  # what an interpreter under the suite's UTF-8 locale writes to a pipe


def run_in_process(argv: Sequence[str], env: Mapping[str, str], input: str | None = None,
                   cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess[str]:
    """`opik-cipx ARGV` with `env` as its environment, `input` on stdin and `cwd` (else the test's) as
    its working directory; what it printed and returned."""
    stdout = io.TextIOWrapper(io.BytesIO(), encoding=ENCODING, errors="surrogateescape")
    stderr = io.TextIOWrapper(io.BytesIO(), encoding=ENCODING, errors="backslashreplace")
    stdin = io.TextIOWrapper(io.BytesIO((input or "").encode(ENCODING)), encoding=ENCODING, errors="surrogateescape")
    saved_env, saved_streams = dict(os.environ), _streams()
    with _fresh_logging(), contextlib.chdir(cwd or os.getcwd()), _threads_started() as started, _freezes() as froze:
        before = _global_state()
        _set_environ(env)
        # The `__std*__` too: argparse and shutil ask `sys.__stdout__` for the terminal's width.
        sys.stdin = sys.__stdin__ = stdin
        sys.stdout = sys.__stdout__ = stdout
        sys.stderr = sys.__stderr__ = stderr
        try:
            code = _exit_status(argv)
            stdout.flush()
            stderr.flush()
        finally:
            sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__ = saved_streams
            _set_environ(saved_env)
        after = _global_state()
    _check_left_nothing(before, after, started, froze)
    return subprocess.CompletedProcess(["opik-cipx", *argv], code, _decoded(stdout), _decoded(stderr))


@contextmanager
def _fresh_logging() -> Iterator[None]:
    """The root and the package's loggers as a fresh interpreter has them for the block: no handler
    (a warning goes to the stderr of the moment, as `logging.lastResort`), not pytest's capture nor
    what an in-process daemon of an earlier test set up; then as they were."""
    loggers = (logging.root, logging.getLogger("opik_cipx"))
    saved = [(logger, logger.level, logger.handlers, logger.propagate, logger.disabled) for logger in loggers]
    for logger, level in zip(loggers, (logging.WARNING, logging.NOTSET), strict=True):
        logger.handlers, logger.propagate, logger.disabled = [], True, False
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, level, handlers, propagate, disabled in saved:
            logger.handlers, logger.propagate, logger.disabled = handlers, propagate, disabled
            logger.setLevel(level)


def _exit_status(argv: Sequence[str]) -> int:
    """`main(argv)`'s status, a `SystemExit` turned into one as the interpreter turns it."""
    try:
        return main(list(argv))
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def _streams() -> tuple:
    return sys.stdin, sys.stdout, sys.stderr, sys.__stdin__, sys.__stdout__, sys.__stderr__


def _set_environ(env: Mapping[str, str]) -> None:
    os.environ.clear()
    os.environ.update(env)
    time.tzset()  # the local time zone is read from TZ once, not at every conversion


def _decoded(stream: io.TextIOWrapper) -> str:
    """What `subprocess.run(text=True)` reads from the pipe: universal newlines (csv's \\r\\n is \\n)."""
    data = stream.buffer.getvalue().decode(ENCODING)  # a BytesIO
    return data.replace("\r\n", "\n").replace("\r", "\n")


def _global_state() -> dict[str, object]:
    """What a command could change for the rest of its process, by name."""
    package = logging.getLogger("opik_cipx")
    return {
        "working directory": os.getcwd(),
        "umask": _umask(),
        "signal handlers": {signum: signal.getsignal(signum) for signum in signal.valid_signals()
                            if signum not in (signal.SIGKILL, signal.SIGSTOP)},
        "root logger": (logging.root.level, list(logging.root.handlers), logging.root.manager.disable,
                        logging.lastResort),
        "opik_cipx logger": (package.level, list(package.handlers), package.propagate, package.disabled),
        "threading.excepthook": threading.excepthook,
        "sys.excepthook": sys.excepthook,
        "GIL switch interval": sys.getswitchinterval(),
    }


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def _threads_started() -> Iterator[list[threading.Thread]]:
    """The threads started in the block by the calling thread, or by one of those: the command's,
    not those a test's servers start meanwhile to answer it."""
    caller, started, start = threading.current_thread(), [], threading.Thread.start

    def recorded(thread: threading.Thread) -> None:
        if threading.current_thread() in (caller, *started):
            started.append(thread)
        start(thread)

    threading.Thread.start = recorded  # for the block only
    try:
        yield started
    finally:
        threading.Thread.start = start


@contextmanager
def _freezes() -> Iterator[list[None]]:
    """The calls to `gc.freeze` in the block. (Not the count of frozen objects: `gc.get_freeze_count`
    walks them all, about 12 ms where the whole suite was collected and frozen: tests/conftest.py.)"""
    calls, freeze = [], gc.freeze

    def counted() -> None:
        calls.append(None)
        freeze()

    gc.freeze = counted  # for the block only
    try:
        yield calls
    finally:
        gc.freeze = freeze


def _check_left_nothing(before: dict[str, object], after: dict[str, object], started: list[threading.Thread],
                        froze: list[None]) -> None:
    changed = [name for name in before if after[name] != before[name]] + (["frozen objects"] if froze else [])
    assert not changed, f"the command changed its process's {', '.join(changed)}: {before} -> {after}"
    left = [thread.name for thread in started if thread.is_alive()]
    assert not left, f"the command returned with threads it started still running: {left}"

