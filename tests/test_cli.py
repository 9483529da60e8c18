"""cli.py: the dispatcher's own behaviour, whatever the command."""

import os
import subprocess
import sys

import pytest

from tests.conftest import cli_env


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
