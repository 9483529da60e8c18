"""`opik-cipx logs [-n N] [--no-follow]`: print the end of the gateway log, then follow it.

Following survives rotation: when `cipx.log` is replaced or truncated it is reopened from
its start. Ctrl-C ends it.
"""

import argparse
import os
import sys
from pathlib import Path
from typing import BinaryIO

from opik_cipx.clock import SYSTEM, Clock
from opik_cipx.config import ConfigError, Settings
from opik_cipx.control.daemon_control import paths_only_settings

FOLLOW_POLL_S = 0.25
BLOCK = 64 * 1024


def _count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of lines: {raw!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--lines", type=_count, default=50, help="how many lines to print first (default 50)")
    parser.add_argument("--no-follow", action="store_true", help="print and exit instead of following")
    parser.set_defaults(on_config_error=on_config_error)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    print(f"opik-cipx: warning: {exc}", file=sys.stderr)
    return run(args, paths_only_settings(dict(os.environ)))


def last_lines(path: Path, count: int) -> tuple[bytes, int]:
    """The last `count` lines of `path` and the offset where the file ended."""
    with open(path, "rb") as fh:
        end = fh.seek(0, os.SEEK_END)
        if count == 0:
            return b"", end
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= count:
            step = min(BLOCK, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
        lines = data.splitlines(keepends=True)
        return b"".join(lines[-count:]), end


def run(args: argparse.Namespace, settings: Settings, clock: Clock = SYSTEM) -> int:
    path = settings.logs_dir / "cipx.log"
    out = sys.stdout.buffer
    try:
        if not path.exists():
            print(f"opik-cipx: no log yet at {path}: the daemon has not run here. Run `opik-cipx sync`.",
                  file=sys.stderr)
            _startup_errors(settings)
            return 1
        text, offset = last_lines(path, args.lines)
        out.write(text)
        out.flush()
        if args.no_follow:
            if not settings.state_path.exists():
                _startup_errors(settings)
            return 0
        _follow(path, offset, out, clock)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `opik-cipx logs | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return 0


def _follow(path: Path, offset: int, out: BinaryIO, clock: Clock) -> None:
    fh = open(path, "rb")
    fh.seek(offset)
    inode = os.fstat(fh.fileno()).st_ino
    while True:
        chunk = fh.read(BLOCK)
        if chunk:
            out.write(chunk)
            out.flush()
            continue
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None  # between rotation's rename and the new file
        if st is not None and (st.st_ino != inode or st.st_size < fh.tell()):
            fh.close()
            fh = open(path, "rb")
            inode = os.fstat(fh.fileno()).st_ino
            continue
        clock.sleep(FOLLOW_POLL_S)


def _startup_errors(settings: Settings) -> None:
    """Show what a daemon that died before it could log wrote to stderr (bad config, say)."""
    path = settings.logs_dir / "daemon.stderr"
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return
    if text:
        print(f"opik-cipx: the last daemon start wrote to {path}:\n{text}", file=sys.stderr)
