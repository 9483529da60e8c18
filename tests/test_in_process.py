"""`tests/in_process.py`: a command run in the test's process answers as its subprocess does, and
what it would leave in a long-lived process fails the call."""

import gc
import io
import json
import logging
import os
import signal
import threading
import time

import pytest

from opik_cipx.clock import SYSTEM
from opik_cipx.commands import config as config_command
from tests.conftest import run_cli, run_command


@pytest.mark.parametrize("args", [
    ["--help"],  # argparse's width: not a terminal
    ["report", "--by", "nothing"],  # argparse's error and exit 2
    ["--version"],  # SystemExit(0) from an action
    ["report", "--json"],  # the product's own error line and exit 1
    ["config", "--example"],
], ids=lambda args: " ".join(args))
def test_answers_as_the_subprocess_does(home, args):
    in_process, subprocess = run_command(home, *args), run_cli(home, *args)
    assert (in_process.returncode, in_process.stdout, in_process.stderr) == \
        (subprocess.returncode, subprocess.stdout, subprocess.stderr)


@pytest.mark.parametrize("stdin", [None, json.dumps({"session_id": "s-1"})], ids=["nothing", "a session"])
def test_stdin_is_the_input_given(home, stdin):
    in_process, subprocess = run_command(home, "statusline", input=stdin), run_cli(home, "statusline", input=stdin)
    assert (in_process.returncode, in_process.stdout) == (subprocess.returncode, subprocess.stdout)
    assert ("no calls recorded yet" in in_process.stdout) == (stdin is not None)


def test_the_environment_and_the_time_zone_are_the_commands_for_the_call(home, monkeypatch):
    seen = []
    monkeypatch.setattr(config_command, "run", lambda args, settings: seen.append(
        (os.environ["CIPX_HOME"], os.environ.get("LANGUAGE_OF_THE_TEST"), time.strftime("%z", time.localtime(0)))) or 0)
    before = dict(os.environ), time.tzname
    run_command(home, "config", "--example", TZ="Asia/Kolkata", LANGUAGE_OF_THE_TEST="en")
    assert seen == [(str(home), "en", "+0530")]
    assert (dict(os.environ), time.tzname) == before


def assert_the_call_fails(home, monkeypatch, run, match: str) -> None:
    """`config --example` in process, its `run` replaced by `run`: the harness fails the call with
    an AssertionError matching `match`."""
    monkeypatch.setattr(config_command, "run", run)
    with pytest.raises(AssertionError, match=match):
        run_command(home, "config", "--example")


def test_a_thread_of_the_package_still_running_fails_the_call(home, monkeypatch):
    stop = threading.Event()

    def leaves_a_thread(args, settings):
        threading.Thread(target=SYSTEM.wait, args=(stop, None), name="cipx-left-behind", daemon=True).start()
        return 0

    try:
        assert_the_call_fails(home, monkeypatch, leaves_a_thread, "cipx-left-behind")
    finally:
        stop.set()


def test_a_thread_started_by_a_thread_it_started_counts_too(home, monkeypatch):
    stop = threading.Event()

    def hands_a_thread_on(args, settings):
        first = threading.Thread(target=lambda: threading.Thread(target=stop.wait, name="cipx-grandchild").start())
        first.start()
        first.join()  # the first is gone; the one it started is not
        return 0

    try:
        assert_the_call_fails(home, monkeypatch, hands_a_thread_on, r"still running: \['cipx-grandchild'\]")
    finally:
        stop.set()


def test_a_signal_handler_left_set_fails_the_call(home, monkeypatch):
    before = signal.getsignal(signal.SIGUSR1)

    def sets_a_handler(args, settings):
        signal.signal(signal.SIGUSR1, lambda *_: None)
        return 0

    try:
        assert_the_call_fails(home, monkeypatch, sets_a_handler, "signal handlers")
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_a_warning_the_package_logs_goes_to_the_commands_stderr_as_in_a_fresh_interpreter(home, monkeypatch):
    """No handler: `logging.lastResort` writes the message alone, whatever pytest or an earlier
    in-process daemon attached to the root or the package's logger."""
    monkeypatch.setattr(config_command, "run", lambda args, settings: logging.getLogger(
        "opik_cipx.ledger.store").warning("ledger: %d call(s) clamped", 1) or 0)
    logging.getLogger("opik_cipx").addHandler(stray := logging.StreamHandler(io.StringIO()))
    try:
        result = run_command(home, "config", "--example")
    finally:
        logging.getLogger("opik_cipx").removeHandler(stray)
    assert (result.returncode, result.stderr) == (0, "ledger: 1 call(s) clamped\n")
    assert stray.stream.getvalue() == ""


def test_objects_frozen_by_the_command_fail_the_call(home, monkeypatch):
    def freezes(args, settings):
        gc.freeze()
        return 0

    try:
        assert_the_call_fails(home, monkeypatch, freezes, "frozen objects")
    finally:
        gc.unfreeze()
        gc.freeze()  # frozen again, as the suite leaves what it collected (tests/conftest.py)
