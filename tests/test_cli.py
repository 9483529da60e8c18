"""cli.py: the dispatcher's own behaviour, whatever the command."""

import os
import subprocess
import sys

import pytest

from tests.conftest import cli_env, run_command


@pytest.mark.parametrize("args", [["prices"], ["status"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path, args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head -0`: nobody will read
    try:
        proc = subprocess.run([sys.executable, "-m", "opik_cipx", *args], env=cli_env(tmp_path / ".opik-cipx"),
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert proc.stderr == "" and proc.returncode == 141  # before: a BrokenPipeError traceback, exit 1


def without_sqlite3(tmp_path) -> dict[str, str]:
    """PYTHONPATH for an interpreter that behaves as one built without SQLite's headers."""
    blocker = tmp_path / "no-sqlite"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['_sqlite3'] = None\n")
    return {"PYTHONPATH": f"{blocker}{os.pathsep}{cli_env(tmp_path)['PYTHONPATH']}"}


@pytest.mark.parametrize("args", [["proxy", "--port", "0"], ["report"], ["replay", "--ledger"]])
def test_a_python_without_sqlite3_gets_one_line_naming_it(tmp_path, args):
    result = subprocess.run([sys.executable, "-m", "opik_cipx", *args], capture_output=True, text=True, timeout=30,
                            env=cli_env(tmp_path / ".opik-cipx", **without_sqlite3(tmp_path)))
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and f"this Python ({sys.executable}) has no sqlite3 module" in result.stderr
    assert "apt install libsqlite3-dev" in result.stderr


def test_status_on_a_python_without_sqlite3_says_so_in_its_today_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "opik_cipx", "status"], capture_output=True, text=True, timeout=30,
                            env=cli_env(tmp_path / ".opik-cipx", **without_sqlite3(tmp_path)))
    assert result.returncode == 0 and result.stderr == ""
    assert "today        ! no ledger: this Python has no sqlite3 module (`opik-cipx report` says what to do)" \
        in result.stdout


def test_the_status_line_on_a_python_without_sqlite3_is_a_hint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "opik_cipx", "statusline"], input='{"session_id": "s"}',
                            capture_output=True, text=True, timeout=30,
                            env=cli_env(tmp_path / ".opik-cipx", **without_sqlite3(tmp_path)))
    assert (result.returncode, result.stdout, result.stderr) == (
        0, "opik-cipx: this Python has no sqlite3 module\n", "")


BAD_KEY = "drain_timeout_s = -1\n"
BAD_KEY_LINE = "bad setting in config file {config}, key 'drain_timeout_s': must be at least 0, got -1.0"


@pytest.mark.parametrize("args, code", [(["report"], 0), (["prices"], 0), (["viewer"], 1)])
def test_a_read_only_command_runs_despite_a_bad_key_it_does_not_read_and_names_it(tmp_path, args, code):
    """A daemon keeps running on the settings it started with; `report`, `prices` and `viewer`
    need none of a bad key, so they say which key is bad and go on."""
    home = tmp_path / ".opik-cipx"
    home.mkdir()
    (home / "config.toml").write_text(BAD_KEY)
    result = run_command(home, *args)
    assert result.returncode == code and "Traceback" not in result.stderr
    warning = (f"opik-cipx: warning: {BAD_KEY_LINE.format(config=home / 'config.toml')}; `{args[0]}` does not use "
               "it, but the daemon will not start with it: fix it before `opik-cipx restart`")
    assert result.stderr.splitlines()[0] == warning
    if args == ["viewer"]:  # past the settings: it says what its own trouble is
        assert "no viewer port yet" in result.stderr.splitlines()[1]


def test_a_command_that_reads_the_bad_key_still_stops_on_it_in_one_line(tmp_path):
    home = tmp_path / ".opik-cipx"
    home.mkdir()
    (home / "config.toml").write_text('[prices."claude-x"]\ninput = "cheap"\n')
    prices = run_command(home, "prices")  # reads the price overrides
    assert prices.returncode == 2 and prices.stdout == "" and prices.stderr.count("\n") == 1
    assert prices.stderr.startswith(f"opik-cipx: bad setting in config file {home / 'config.toml'}, key 'prices'")
    assert "claude-x" in prices.stderr
    (home / "config.toml").write_text(BAD_KEY)
    replay = run_command(home, "replay")  # builds the daemon's materializer: every setting counts
    assert (replay.returncode, replay.stderr) == (2, f"opik-cipx: {BAD_KEY_LINE.format(config=home / 'config.toml')}\n")
    (home / "config.toml").write_text("a = = 1")
    broken = run_command(home, "prices")  # a file that is no TOML at all: the overrides cannot be read either
    assert broken.returncode == 2 and "is not valid TOML" in broken.stderr and broken.stderr.count("\n") == 1
    report = run_command(home, "report")
    assert report.returncode == 0 and "is not valid TOML" in report.stderr
    assert "`report` does not use it" in report.stderr
