"""The wire's side of the work process (control/work_process.py), with real child processes: a
child that dies is started again with the supervisor's backoff, its deaths are recorded, a
capture it died on twice is passed over by the next one, and a stop asked for ends it cleanly."""

import os
import sys

from opik_cipx.control.work_process import WorkProcess
from tests.conftest import wait_for

# A stand-in for the work process: it writes down the positions its hello says to pass over; while
# there are none it "dies on the capture at 1:0", else it runs until the wire says stop.
CHILD = """
import os, socket, sys
from opik_cipx.link import WORK_FD_ENV, WORKING_FD_ENV, Link, WorkingSlot
link = Link(socket.socket(fileno=int(os.environ[WORK_FD_ENV])), blocking=True)
working = WorkingSlot(int(os.environ[WORKING_FD_ENV]))
_, skip = link.recv()
with open(sys.argv[1], "a") as out:
    out.write(repr(skip) + "\\n")
if not skip:
    working.set((1, 0))
    os._exit(1)
link.send("ready", os.getpid())
while (message := link.recv()) is not None and message[0] != "stop":
    pass
sys.exit(0)
"""


def test_a_work_process_that_dies_on_one_capture_twice_is_restarted_past_it_and_stops_when_asked(tmp_path):
    hellos = tmp_path / "hellos"
    work = WorkProcess([sys.executable, "-c", CHILD, str(hellos)], dict(os.environ),
                       lambda skip: ("hello", [tuple(position) for position in skip]))
    work.start()
    try:
        record = wait_for(lambda: (r := work.section())["state"] == "running" and r, timeout_s=30,
                          what="the third work process running")
        assert hellos.read_text().splitlines() == ["[]", "[]", "[(1, 0)]"]
        assert record["restarts"] == 2 and record["pid"] == work.pid
        assert [(d["how"], d["working"]) for d in record["deaths"]] == [("exited with status 1", [1, 0])] * 2
    finally:
        assert work.stop(("stop",), timeout_s=10)
    assert work.section()["state"] == "stopped" and work.pid is None


def test_a_work_process_that_cannot_be_started_is_tried_again_without_holding_anything(tmp_path):
    work = WorkProcess([str(tmp_path / "no-such-executable")], dict(os.environ), lambda skip: ("hello", skip))
    work.start()
    wait_for(lambda: work.section()["state"] == "restarting", what="the failed start recorded")
    assert not work.send("log", 1)  # nothing to send to: never an error, never a wait
    assert work.stats(timeout_s=0.1) is None
    assert work.stop(("stop",), timeout_s=5)
    assert work.section()["state"] == "stopped"
