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
