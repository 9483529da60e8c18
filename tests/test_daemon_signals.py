"""Signals a daemon may get besides SIGTERM (issue 22.10): SIGQUIT drains like SIGTERM; SIGHUP
drains when the daemon has a terminal (a `proxy` run by hand whose terminal closed) and is
ignored without one (supervised); SIGUSR1 and SIGUSR2 are ignored. Real daemons, real signals,
a real pseudo-terminal (docs/LIFECYCLE.md, "Signals")."""

import fcntl
import os
import pty
import signal
import termios
import urllib.request

from tests.conftest import DaemonProcess, wait_for


def log_text(home) -> str:
    path = home / "logs" / "cipx.log"
    return path.read_text() if path.exists() else ""


def healthy(daemon: DaemonProcess) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.admin_port}/admin/health", timeout=5) as resp:
        return resp.status == 200


def drained(daemon: DaemonProcess, signame: str) -> None:
    """The daemon ended as SIGTERM ends it: exit 0, state.json removed, the drain logged."""
    assert daemon.proc.wait(20) == 0
    assert not (daemon.home / "state.json").exists()
    text = log_text(daemon.home)
    assert f"{signame} received: draining" in text and "opik-cipx stopped" in text


def test_sigquit_drains_like_sigterm(home, upstream):
    daemon = DaemonProcess(home, upstream.url)
    try:
        daemon.proc.send_signal(signal.SIGQUIT)
        drained(daemon, "SIGQUIT")
    finally:
        daemon.kill()


def test_without_a_terminal_sighup_and_the_user_signals_are_ignored(home, upstream):
    """Each signal twice, in turn, to one daemon: each time logged as ignored, the daemon serving on."""
    daemon = DaemonProcess(home, upstream.url, popen={"start_new_session": True})  # as supervised: no terminal
    names = [signal.Signals(signum).name for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP)]
    try:
        for name in names:
            for times in (1, 2):  # again: still nothing
                daemon.proc.send_signal(signal.Signals[name])
                wait_for(lambda: log_text(home).count(f"{name} ignored") == times,  # noqa: B023 - waited on here
                         what=f"{name} logged as ignored {times} time(s)")
                assert daemon.proc.poll() is None, f"the daemon ended on {name}"
                assert healthy(daemon) and (home / "state.json").exists(), f"the daemon stopped serving on {name}"
        assert daemon.stop() == 0 and not (home / "state.json").exists()
        assert {name: log_text(home).count(f"{name} ignored") for name in names} == dict.fromkeys(names, 2)
    finally:
        daemon.kill()


def test_a_proxy_run_by_hand_drains_when_its_terminal_closes(home, upstream):
    primary, secondary = pty.openpty()

    def take_the_terminal() -> None:  # what a shell does for the command it starts in a terminal
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        daemon = DaemonProcess(home, upstream.url, popen={"stdin": secondary, "preexec_fn": take_the_terminal})
    finally:
        os.close(secondary)
    try:
        assert healthy(daemon)
        os.close(primary)  # the terminal window closes: the kernel sends SIGHUP to the session
        drained(daemon, "SIGHUP")
    finally:
        daemon.kill()


def test_under_the_detached_supervisor_hup_and_usr_signals_to_the_group_change_nothing_and_quit_stops_both(
        machine):
    from opik_cipx.control.daemon_control import pid_alive
    from tests.lifecycle_helpers import wait_gone
    assert machine.cli("sync").returncode == 0
    supervisor, daemon = machine.supervisor()["pid"], machine.state()["pid"]
    for signum in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        os.killpg(supervisor, signum)  # the supervisor's process group holds the daemon too
    wait_for(lambda: log_text(machine.home).count(" ignored") == 3, what="the daemon ignoring the three")
    assert pid_alive(supervisor) and pid_alive(daemon)
    assert machine.supervisor()["state"] == "running" and machine.state()["pid"] == daemon
    os.kill(supervisor, signal.SIGQUIT)  # as SIGTERM: stop, the daemon drained first
    wait_gone(supervisor)
    wait_gone(daemon)
    assert machine.state() is None and "SIGTERM received: draining" in log_text(machine.home)
