"""Crashes with real processes: kill -9 while records are appended and shipped, then restart."""

import json
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import REPO, DaemonProcess, wait_for
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik
from tests.spool_driver import prefill


class Driver:
    """`tests/spool_driver.py` in a subprocess; collects what it reports on stdout."""

    def __init__(self, spool_dir: Path, opik_url: str, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.spool_driver", str(spool_dir), opik_url, *args],
            cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        self.lock = threading.Lock()
        self.acked: set[str] = set()
        self.recovered: dict | None = None
        self.stats: dict | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        wait_for(lambda: self.recovered is not None, what="driver started")

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue  # the last line of a process killed while writing it
            with self.lock:
                self.acked.update(doc.get("acked", ()))
                self.recovered = doc.get("recovered", self.recovered)
                self.stats = doc.get("stats", self.stats)

    def acked_ids(self) -> set[str]:
        with self.lock:
            return set(self.acked)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self.reader.join(10)

    def stop(self) -> None:
        self.proc.terminate()
        assert self.proc.wait(10) == 0
        self.reader.join(10)


def assert_upserts_only(opik: FakeOpik) -> None:
    """Every id Opik got more than once came with the same content (same last_updated_at)."""
    for versions in opik.received.values():
        assert all(version == versions[0] for version in versions)


def test_kill_9_while_appending_and_shipping_loses_no_acknowledged_record(tmp_path):
    spool_dir = tmp_path / "spool"
    acked: set[str] = set()
    with FakeOpik() as opik:
        opik.delay_s = 0.005  # requests are in flight when the kill lands
        first = Driver(spool_dir, opik.url, "--rate", "300")
        wait_for(lambda: len(first.acked_ids()) >= 600 and len(opik.ids()) >= 300, what="appending and shipping")
        first.kill()
        acked |= first.acked_ids()

        opik.down()  # the second run only appends, then dies too
        second = Driver(spool_dir, opik.url, "--rate", "300")
        wait_for(lambda: len(second.acked_ids()) >= 600, what="appending during the outage")
        second.kill()
        acked |= second.acked_ids()
        newest = max(spool_dir.glob("*.jsonl"))
        with open(newest, "ab") as fh:  # what a power cut in the middle of a write leaves behind
            fh.write(b'{"kind":"span","body":{"id":"01')

        opik.up()
        third = Driver(spool_dir, opik.url, "--rate", "0")
        assert third.recovered["corrupt_records"] == 1
        wait_for(lambda: acked <= opik.ids(), timeout_s=30, what="every acknowledged record at Opik")
        wait_for(lambda: third.stats and third.stats["queue"] == {"in_memory": 0, "ready": 0, "inflight": 0},
                 what="spool drained")
        third.stop()
    assert opik.violations == []
    assert_upserts_only(opik)


def test_daemon_killed_mid_drain_ships_everything_after_restart(home, upstream):
    ids = {r["body"]["id"] for r in prefill(home / "spool", 700)}
    env = {"OPIK_CIPX_BASE_URL": "", "OPIK_CIPX_API_KEY": API_KEY, "OPIK_CIPX_WORKSPACE": WORKSPACE}
    with FakeOpik() as opik:
        env["OPIK_CIPX_BASE_URL"] = opik.url
        opik.delay_s = 0.3
        daemon = DaemonProcess(home, upstream.url, **env)
        wait_for(lambda: opik.requests, what="first request")
        daemon.kill()
        assert not ids <= opik.ids()
        opik.delay_s = 0
        daemon = DaemonProcess(home, upstream.url, **env)
        try:
            wait_for(lambda: ids <= opik.ids(), timeout_s=30, what="everything at Opik")
        finally:
            assert daemon.stop() == 0
    assert opik.violations == []
    assert_upserts_only(opik)
