"""`opik-cipx purge`: confirmation, stopping the daemon, wiping the spool, the count it prints."""

import argparse
import builtins
import sys

from opik_cipx.commands import purge
from opik_cipx.config import load_settings
from opik_cipx.store.spool import Spool
from tests.lifecycle_helpers import wait_gone
from tests.spool_driver import prefill

MIB = 1024 * 1024


def fill(machine, captures: int, shipped: int = 0) -> None:
    """`captures` calls in the spool, the first `shipped` records already accepted by Opik."""
    prefill(machine.home / "spool", captures)
    if shipped:
        spool = Spool(machine.home / "spool", max_bytes=MIB, segment_bytes=MIB, inmem_max=1, inmem_max_bytes=MIB)
        spool.commit(spool.read_batch(shipped, MIB))


def test_refuses_without_yes_when_stdin_is_not_a_terminal(machine):
    fill(machine, 2)
    result = machine.cli("purge")
    assert result.returncode == 1
    assert "--yes" in result.stderr and "nothing changed" in result.stderr
    assert any((machine.home / "spool").glob("*.jsonl"))


def test_yes_wipes_the_spool_and_prints_what_was_dropped(machine):
    fill(machine, 3, shipped=2)
    (machine.home / "spool" / "quarantine.jsonl").write_text("{}\n")
    result = machine.cli("purge", "--yes")
    assert result.returncode == 0, result.stderr
    assert "7 unshipped record(s)" in result.stdout
    assert not (machine.home / "spool").exists()
    assert machine.state() is None  # it was not running, so it is not started


def test_stops_the_running_daemon_wipes_and_starts_it_again(machine):
    fill(machine, 4)
    assert machine.cli("sync").returncode == 0
    before = machine.state()["pid"]
    assert machine.stats()["queue"]["ready"] == 12  # Opik not configured: the records wait
    result = machine.cli("purge", "--yes")
    assert result.returncode == 0, result.stderr
    assert "daemon stopped" in result.stdout and "12 unshipped record(s)" in result.stdout
    wait_gone(before)
    after = machine.state()
    assert after and after["pid"] != before
    stats = machine.stats()
    assert stats["queue"] == {"in_memory": 0, "ready": 0, "inflight": 0} and stats["wal"]["segments"] == 0
    assert machine.base_url() == f"http://127.0.0.1:{machine.port}"


def test_asks_on_a_terminal(machine, monkeypatch, capsys):
    fill(machine, 1)
    settings = load_settings(machine.env())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda prompt: "n")
    assert purge.run(argparse.Namespace(yes=False, all=False), settings) == 1
    assert "3 record(s)" in capsys.readouterr().out
    assert (machine.home / "spool").exists()
    monkeypatch.setattr(builtins, "input", lambda prompt: "y")
    assert purge.run(argparse.Namespace(yes=False, all=False), settings) == 0
    assert not (machine.home / "spool").exists()


def test_purge_says_it_keeps_the_captures_and_all_deletes_them_and_the_ledger(machine):
    fill(machine, 2)
    captures = machine.home / "captures"
    captures.mkdir(mode=0o700)
    (captures / "20270115T080000Z-1-0.jsonl.gz").write_bytes(b"x" * 3000)
    refused = machine.cli("purge")
    assert refused.returncode == 1 and (machine.home / "spool").exists()

    kept = machine.cli("purge", "--yes")
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.splitlines()[-1] == (f"opik-cipx: kept {captures} (2.9 KiB of raw captures); "
                                           "`opik-cipx purge --all` deletes them too")
    assert (captures / "20270115T080000Z-1-0.jsonl.gz").exists()

    fill(machine, 1)
    ledger = [machine.home / name for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm")]
    for path in ledger:
        path.write_bytes(b"sqlite")
    (machine.home / "config.toml").write_text("tee_queue_max = 64\n")
    everything = machine.cli("purge", "--all", "--yes")
    assert everything.returncode == 0, everything.stderr
    assert everything.stdout.splitlines()[-2:] == [
        "opik-cipx: spool wiped: 3 unshipped record(s) (spans and traces) dropped",
        "opik-cipx: raw captures deleted (2.9 KiB), and the ledger"]
    assert not captures.exists() and not any(path.exists() for path in ledger)
    assert (machine.home / "config.toml").exists() and (machine.home / "ports.json").exists()


def test_the_question_lists_what_goes_and_what_stays(machine, monkeypatch, capsys):
    fill(machine, 1)
    (machine.home / "captures").mkdir(mode=0o700)
    (machine.home / "ledger.db").write_bytes(b"sqlite")
    settings = load_settings(machine.env())
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(builtins, "input", lambda prompt: "n")
    assert purge.run(argparse.Namespace(yes=False, all=False), settings) == 1
    home = machine.home
    assert capsys.readouterr().out == (
        "This stops opik-cipx and deletes, for good:\n"
        f"  - {home}/spool: 3 record(s) (spans and traces) not yet shipped to Opik\n"
        "It keeps:\n"
        f"  - {home}/captures (0 B of raw captures: whole prompts and responses); `opik-cipx purge --all` deletes "
        "them too\n"
        "  - config.toml, logs/ and sessions/\n")
    assert purge.run(argparse.Namespace(yes=False, all=True), settings) == 1
    assert capsys.readouterr().out == (
        "This stops opik-cipx and deletes, for good:\n"
        f"  - {home}/spool: 3 record(s) (spans and traces) not yet shipped to Opik\n"
        f"  - {home}/captures (0 B of raw captures: whole prompts and responses)\n"
        f"  - {home}/ledger.db\n"
        "It keeps:\n"
        "  - config.toml, logs/ and sessions/\n")
    assert (home / "ledger.db").exists() and (home / "captures").exists()
