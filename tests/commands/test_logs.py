"""`opik-cipx logs`: the last lines, then following across rotation."""

import os
import signal
import subprocess
import sys

from opik_cipx.commands.logs import last_lines
from tests.conftest import wait_for


def test_last_lines_across_blocks(tmp_path):
    log = tmp_path / "cipx.log"
    log.write_bytes(b"".join(b"line %d %s\n" % (i, b"x" * 300) for i in range(1000)))
    text, end = last_lines(log, 3)
    assert text.splitlines()[0].startswith(b"line 997 ") and len(text.splitlines()) == 3
    assert end == log.stat().st_size
    assert last_lines(log, 0) == (b"", end)
    assert len(last_lines(log, 5000)[0].splitlines()) == 1000
    log.write_bytes(b"no newline at the end")
    assert last_lines(log, 2)[0] == b"no newline at the end"


def test_missing_log_says_what_to_do(machine):
    result = machine.command("logs", "--no-follow")
    assert result.returncode == 1 and "no log yet" in result.stderr and "opik-cipx sync" in result.stderr


def test_no_follow_prints_the_tail(machine):
    logs = machine.home / "logs"
    logs.mkdir()
    (logs / "cipx.log").write_text("".join(f"entry {i}\n" for i in range(10)))
    result = machine.command("logs", "-n", "3", "--no-follow")
    assert result.returncode == 0 and result.stdout == "entry 7\nentry 8\nentry 9\n"
    assert machine.command("logs", "-n", "-2").returncode == 2


def test_follow_survives_rotation_and_stops_on_ctrl_c(machine):
    logs = machine.home / "logs"
    logs.mkdir()
    log = logs / "cipx.log"
    log.write_text("old 1\nold 2\n")
    proc = subprocess.Popen([sys.executable, "-m", "opik_cipx", "logs", "-n", "1"], env=machine.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        seen = bytearray()

        def saw(text: bytes) -> bool:
            seen.extend(proc.stdout.read() or b"")
            return text in seen

        wait_for(lambda: saw(b"old 2\n"), what="the tail")
        assert b"old 1" not in seen
        with open(log, "a") as fh:
            fh.write("new 1\n")
        wait_for(lambda: saw(b"new 1\n"), what="an appended line")
        log.rename(logs / "cipx.log.1")
        log.write_text("rotated 1\n")
        wait_for(lambda: saw(b"rotated 1\n"), what="the line after rotation")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
