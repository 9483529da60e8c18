"""`daemon_control.stop_daemon`: "stopped" only once the daemon is gone, found by its home lock even
when `state.json` is not there; SIGKILL once the wait is over, on the command's clock."""

import json
import os
import select
import signal
import subprocess
import sys
import threading

import pytest

from opik_cipx.config import load_settings
from opik_cipx.control.daemon_control import find_processes, lock_holder, pid_alive, stop_daemon
from opik_cipx.home import LOCK_FILE, lock_home
from tests.conftest import REPO
from tests.fake_clock import FakeClock

# A stand-in daemon: its command line reads as an opik-cipx `proxy` (is_our_daemon), it holds the home
# lock as the daemon does, and says on stdout what it does. On SIGTERM it drains until told to end (a
# line on stdin); `stubborn` ignores SIGTERM.
FAKE_DAEMON = """
import signal, sys
from pathlib import Path
from opik_cipx.home import lock_home
home, mode = Path(sys.argv[1]), sys.argv[2]
lock = lock_home(home)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: print("draining", flush=True))
print("ready", flush=True)
sys.stdin.readline()
"""


def next_line(proc: subprocess.Popen, timeout_s: float = 30) -> str:
    """The fake daemon's next line; fails at the deadline (one that never comes is not a hang)."""
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    assert ready, "the fake daemon said nothing"
    return proc.stdout.readline()


@pytest.fixture
def settings(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    return load_settings({"CIPX_HOME": str(home), "CIPX_CONFIG": os.devnull})


@pytest.fixture
def fake_daemon(settings):
    started = []

    def start(mode: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_DAEMON, str(settings.home), mode, "opik-cipx", "proxy"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        started.append(proc)
        assert next_line(proc) == "ready\n"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def test_a_draining_daemon_whose_state_json_is_gone_is_stopped_and_waited_for(settings, fake_daemon):
    proc = fake_daemon("drain")  # it removed state.json already, as the daemon does before it exits
    assert not settings.state_path.exists() and lock_holder(settings.home / LOCK_FILE) == proc.pid
    assert find_processes(settings).daemons == {proc.pid}
    result = []
    stopping = threading.Thread(target=lambda: result.append(stop_daemon(settings)))
    stopping.start()
    assert next_line(proc) == "draining\n", result  # it got SIGTERM, and drains until told to end
    assert stopping.is_alive() and pid_alive(proc.pid)
    proc.stdin.write("end\n")
    proc.stdin.flush()
    stopping.join(30)  # a deadline for a wait that never ends, not a speed target
    assert result == ["stopped"]
    assert not pid_alive(proc.pid) and lock_holder(settings.home / LOCK_FILE) is None


def test_a_daemon_that_ignores_sigterm_is_killed_once_its_drain_time_is_over_on_the_commands_clock(
        settings, fake_daemon):
    proc = fake_daemon("stubborn")
    settings.state_path.write_text(json.dumps({"pid": proc.pid}))
    clock = FakeClock(0)
    assert stop_daemon(settings, clock=clock) == "killed"
    assert proc.wait(30) == -signal.SIGKILL
    assert clock.monotonic() - 1000 >= settings.drain_timeout_s + 5  # it waited its time first, on that clock
    assert not settings.state_path.exists()


def test_a_stale_state_json_is_removed_and_nothing_is_signalled(settings):
    bystander = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        settings.state_path.write_text(json.dumps({"pid": bystander.pid}))  # its pid now another program's
        lock = lock_home(settings.home)
        lock.release()  # a daemon.lock left behind, held by nobody
        assert find_processes(settings).daemons == frozenset()
        assert stop_daemon(settings) == "not running"
        assert not settings.state_path.exists() and bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
