"""`opik-cipx ship --retry-quarantine` (in the test's process: `run_command`) against the real daemon and the
fake Opik, daemon up and down."""

import json

from tests.conftest import DaemonProcess, run_command, wait_for
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik
from tests.spool_driver import prefill

QUARANTINE_LINE = "! quarantine: 1 record(s) Opik refused wait in spool/quarantine.jsonl"


def start(home, upstream, opik: FakeOpik) -> DaemonProcess:
    return DaemonProcess(home, upstream.url, OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY,
                         OPIK_CIPX_WORKSPACE=WORKSPACE)


def quarantined(home, record: dict, reason: str) -> None:
    """`record` in `spool/quarantine.jsonl`, as a daemon sets aside a record Opik refused with 400."""
    (home / "spool").mkdir(parents=True, exist_ok=True)
    entry = {"at": "2026-11-27T00:00:00.000Z", "kind": record["kind"], "status": 400, "reason": reason,
             "body": record["body"]}
    (home / "spool" / "quarantine.jsonl").write_text(json.dumps(entry) + "\n")


def test_retry_quarantine_with_the_daemon_up_ships_what_opik_refused_before(home, upstream):
    records = prefill(home / "spool", 5)
    bad = records[4]["body"]["id"]
    with FakeOpik() as opik:
        opik.reject_ids[bad] = "usage.prompt_tokens: must be an integer"
        daemon = start(home, upstream, opik)
        try:
            wait_for(lambda: daemon.stats()["opik"]["quarantined"] == 1, what="the record set aside")
            status = run_command(home, "status")
            assert QUARANTINE_LINE in status.stdout and "`opik-cipx ship --retry-quarantine`" in status.stdout
            assert bad not in opik.ids()
            del opik.reject_ids[bad]  # the user fixed the cause
            result = run_command(home, "ship", "--retry-quarantine")
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith("opik-cipx: 1 record(s) are back in the queue to Opik")
            wait_for(lambda: bad in opik.ids(), what="the record at Opik")
            assert opik.received[bad] == [records[4]["body"]]  # the same id and version it always had
            idle = {"in_memory": 0, "ready": 0, "inflight": 0}
            stats = wait_for(lambda: (s := daemon.stats())["queue"] == idle and s, what="spool drained")
            assert stats["opik"]["quarantined"] == 0 and stats["opik"]["retry_pending"] == 0
            assert stats["counters"]["spans_shipped"] == 15
            assert "! quarantine" not in run_command(home, "status").stdout
            assert not list((home / "spool").glob("requeue-*"))
        finally:
            assert daemon.stop() == 0
        assert opik.violations == []


def test_retry_quarantine_with_the_daemon_down_ships_at_the_next_start(home, upstream):
    """The quarantine a stopped daemon left (a daemon setting a record aside: the test above), set up
    on disk: the retry waits for the next start, which ships the record."""
    record = prefill(home / "spool-elsewhere", 1)[0]
    bad = record["body"]["id"]
    quarantined(home, record, "name: must not be blank")
    with FakeOpik() as opik:
        status = run_command(home, "status")
        assert "not running" in status.stdout and QUARANTINE_LINE in status.stdout
        result = run_command(home, "ship", "--retry-quarantine")
        assert result.returncode == 0, result.stderr
        assert "1 record(s) handed back from the quarantine; the daemon ships them when it starts" in result.stdout
        assert "retry pending: 1 record(s)" in run_command(home, "status").stdout
        daemon = start(home, upstream, opik)
        try:
            wait_for(lambda: bad in opik.ids(), what="the trace at Opik")
            assert json.loads(run_command(home, "status", "--json").stdout)["opik"]["retry_pending"] == 0
        finally:
            assert daemon.stop() == 0
        assert opik.violations == []


def test_nothing_to_retry_and_the_flag_is_required(home):
    assert (run_command(home, "ship", "--retry-quarantine").stdout
            == "opik-cipx: the quarantine is empty: nothing to retry\n")
    bare = run_command(home, "ship")
    assert bare.returncode == 2 and "--retry-quarantine" in bare.stderr


def test_retry_quarantine_while_opik_is_not_configured_says_so_at_once(daemon):
    quarantined(daemon.home, prefill(daemon.home / "spool-elsewhere", 1)[0], "x")
    result = run_command(daemon.home, "ship", "--retry-quarantine")  # the wording says it did not wait
    assert result.stdout == ("opik-cipx: 1 record(s) handed back from the quarantine; they are shipped once Opik is "
                             "configured (`opik-cipx status` says how)\n")
    assert daemon.stats()["opik"]["retry_pending"] == 1
    again = run_command(daemon.home, "ship", "--retry-quarantine")
    assert again.stdout == ("opik-cipx: the quarantine is empty: nothing to retry "
                            "(1 record(s) from an earlier retry still wait for the daemon)\n")
