"""Where the capture log ends, as the wire tells the work process (control/work_process.py): at most
one note per `NOTE_INTERVAL_S`, the last one always told, through the capture thread's own wait.
A real child process reads the link; a real capture thread (`wire/tee.Pipeline`) sends."""

import os
import sys

from opik_cipx.control.work_process import NOTE_INTERVAL_S, WorkProcess
from opik_cipx.stats import Counters
from opik_cipx.store.captures import LogPosition, LogTail
from opik_cipx.wire.capture import Capture
from opik_cipx.wire.tee import Pipeline
from tests.conftest import wait_for
from tests.fake_clock import FakeClock

# A stand-in for the work process: it writes down every note it gets, one per line.
CHILD = """
import os, socket, sys
from opik_cipx.link import WORK_FD_ENV, Link
link = Link(socket.socket(fileno=int(os.environ[WORK_FD_ENV])), blocking=True)
link.recv()
link.send("ready", os.getpid())
with open(sys.argv[1], "a") as out:
    while (message := link.recv()) is not None and message[0] != "stop":
        if message[0] == "log":
            out.write(f"{message[1].seq}\\n")
            out.flush()
"""


def tail(seq: int) -> LogTail:
    return LogTail(LogPosition(1, seq * 100), seq, 0)


def test_a_burst_of_captures_is_told_in_few_notes_and_the_last_one_always_arrives(tmp_path):
    notes = tmp_path / "notes"
    work = WorkProcess([sys.executable, "-c", CHILD, str(notes)], dict(os.environ), lambda skip: ("hello",))
    work.start()
    wait_for(lambda: work.section()["state"] == "running", timeout_s=30, what="the stand-in running")
    appended = iter(range(1, 10**6))
    pipeline = Pipeline([("capture", lambda capture: work.note(tail(next(appended))))], Counters(),
                        maxsize=1000, max_bytes=10**9, after=work.flush_note)
    pipeline.start()
    try:
        for n in range(200):
            pipeline.offer(Capture(id=f"id-{n}", started_at_ns=n, method="POST", path="/v1/messages",
                                   request_headers=[]))
        # The last capture's note comes from the capture thread's wait, with nothing else to wake it.
        told = wait_for(lambda: (lines := notes.read_text().split() if notes.exists() else [])
                        and lines[-1] == "200" and lines, what="the last note")
    finally:
        assert pipeline.stop(timeout_s=5)
        assert work.stop(("stop",), timeout_s=10)
    assert told[0] == "1"  # the first of a burst goes at once
    assert len(told) < 100 and [int(seq) for seq in told] == sorted({int(seq) for seq in told})


def test_notes_go_at_most_once_an_interval_and_a_held_one_when_due():
    clock = FakeClock(0)
    work = WorkProcess(["unused"], {}, lambda skip: ("hello",), clock=clock)
    sent = []
    work.send = lambda *message: sent.append(message) or True  # type: ignore[method-assign]
    assert work.flush_note() is None  # nothing held
    work.note(tail(1))
    assert sent == [("log", tail(1))]
    clock.advance(NOTE_INTERVAL_S / 4)
    work.note(tail(2))
    work.note(tail(3))  # replaces the one held
    assert sent == [("log", tail(1))]
    assert abs(work.flush_note() - NOTE_INTERVAL_S * 3 / 4) < 1e-9
    clock.advance(NOTE_INTERVAL_S * 3 / 4)
    assert work.flush_note() is None and sent[1:] == [("log", tail(3))]
    work.note(tail(4))  # an interval has not passed since the last one went
    assert sent[2:] == [] and work.flush_note() is not None
