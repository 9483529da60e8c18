"""Shipping with a device token (issue 20.6): a token that may only `POST .../traces`, `PATCH
.../traces/{id}` and `POST`/`PATCH .../spans/batch`. Every record reaches Opik exactly once, also
across a `kill -9` of the daemon, and the API-key path (the batch endpoints) stays as it was."""

from datetime import datetime
from pathlib import Path

import pytest

from opik_cipx.ship.destination import Destination
from opik_cipx.ship.shipper import Shipper
from opik_cipx.stats import Counters, utc_iso
from opik_cipx.store.spool import Spool
from tests.conftest import DaemonProcess, wait_for
from tests.cost_intelligence import ingest
from tests.fake_opik import API_KEY, DEVICE_TOKEN, WORKSPACE, FakeOpik
from tests.spool_driver import synthetic_capture

MIB = 1024 * 1024
IDLE = {"in_memory": 0, "ready": 0, "inflight": 0}
DEVICE_ENDPOINTS = {("POST", "spans/batch"), ("PATCH", "spans/batch"), ("POST", "traces"), ("PATCH", "traces/{id}")}


def later(iso: str, seconds: float) -> str:
    return utc_iso(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() + seconds)


def turns(count: int, calls: int) -> list[dict]:
    """`count` turns of `calls` calls each, as the materializer spools them: each call brings its
    spans and a new version of its turn's trace (later `last_updated_at`, more in it)."""
    out: list[dict] = []
    for _ in range(count):
        first = synthetic_capture()
        trace = first[0]["body"]
        out += first
        for n in range(1, calls):
            call = synthetic_capture()
            for record in call[1:]:
                record["body"]["trace_id"] = trace["id"]
            stamp = later(trace["last_updated_at"], n)
            session = {"schema_version": 2, "harness": "claude_code", "session_id": "session-1",
                       "identity": {"user_uuid": f"user-after-call-{n + 1}"}}
            version = {**trace, "name": f"turn, call {n + 1}", "end_time": stamp, "last_updated_at": stamp,
                       "output": {"text": f"answer {n + 1}"},
                       "metadata": {"cc": {"calls": n + 1}, "cipx": {"session": session}}}
            out += [{"kind": "trace", "body": version}, *call[1:]]
    return out


def spool_records(directory: Path, records: list[dict]) -> None:
    """Leave `records` in a spool at `directory`, as a stopped daemon would."""
    spool = Spool(directory, max_bytes=1 << 26, segment_bytes=1 << 14, inmem_max=100_000, inmem_max_bytes=1 << 26)
    spool.append(records)
    assert spool.close(5) == 0


def newest(records: list[dict]) -> dict[str, dict]:
    """id -> the version Opik must end up holding (the latest `last_updated_at`, the later on a tie)."""
    out: dict[str, dict] = {}
    for record in records:
        body = record["body"]
        if body["id"] not in out or body["last_updated_at"] >= out[body["id"]]["last_updated_at"]:
            out[body["id"]] = body
    return out


def assert_opik_holds_the_newest(opik: FakeOpik, records: list[dict], device: bool) -> None:
    held = {**opik.traces, **opik.spans}
    for record_id, body in newest(records).items():
        stored = held[record_id]
        expected = dict(body)
        if device and "trace_id" not in body:  # a trace updated by PATCH keeps its first last_updated_at
            stored, expected = dict(stored), expected
            stored.pop("last_updated_at"), expected.pop("last_updated_at")
        assert stored == expected, record_id


def assert_device_token_only(opik: FakeOpik) -> None:
    from tests.fake_opik import endpoint_of

    called = set()
    for request in opik.requests:
        endpoint, _ = endpoint_of(request.method, request.path)
        assert endpoint is not None, request.path
        called.add((request.method, endpoint.name.split(" ", 1)[1]))
    assert called <= DEVICE_ENDPOINTS and ("PATCH", "traces/{id}") in called
    assert [r.status for r in opik.requests if r.status == 403] == []


def test_with_a_device_token_a_trace_is_created_once_then_updated(tmp_path):
    records = turns(4, calls=3)
    traces = {r["body"]["id"] for r in records if r["kind"] == "trace"}
    with FakeOpik(api_key=None, device_token=DEVICE_TOKEN) as opik:
        spool = Spool(tmp_path / "spool", max_bytes=64 * MIB, segment_bytes=MIB, inmem_max=100_000,
                      inmem_max_bytes=64 * MIB, commit_interval_s=0.01, retry_s=0.02)
        destination = Destination(opik.url, "", WORKSPACE, "claude-code", device_token=DEVICE_TOKEN)
        counters = Counters()
        shipper = Shipper(spool, destination, counters, timeout_s=5.0, retry_base_s=0.01, retry_max_s=0.05,
                          batch_max_records=10)  # batches of 10: a trace's versions come in several
        spool.start()
        shipper.start()
        try:
            spool.append(records)
            spool.flush(5)
            wait_for(lambda: shipper.queue_section() == IDLE, what="everything shipped")
            assert shipper.section()["last_error"] is None
            assert shipper.section()["endpoints"] == "device_token"
        finally:
            shipper.stop(5)
            spool.close(5)
    assert opik.violations == []
    assert_device_token_only(opik)
    assert all(len(opik.received[trace_id]) == 1 for trace_id in traces)  # one POST per trace id
    assert_opik_holds_the_newest(opik, records, device=True)
    identities = ingest(opik.arrivals()).identities  # Cost Intelligence reads a trace's updates too
    assert {trace_id: who.user_uuid for trace_id, who in identities.items()} == dict.fromkeys(traces,
                                                                                                "user-after-call-3")


@pytest.mark.parametrize("auth", ["api_key", "device_token"])
def test_every_record_exactly_once_across_a_kill_9_of_the_daemon(home, upstream, auth):
    records = turns(60, calls=4)
    spool_records(home / "spool", records)
    traces = {r["body"]["id"] for r in records if r["kind"] == "trace"}
    credential = {"OPIK_CIPX_API_KEY": API_KEY} if auth == "api_key" else {"OPIK_CIPX_DEVICE_TOKEN": DEVICE_TOKEN}
    fake = FakeOpik() if auth == "api_key" else FakeOpik(api_key=None, device_token=DEVICE_TOKEN)
    with fake as opik:
        env = {"OPIK_CIPX_BASE_URL": opik.url, "OPIK_CIPX_WORKSPACE": WORKSPACE, **credential}
        opik.delay_s = 0.3  # a request is in flight when the kill lands
        daemon = DaemonProcess(home, upstream.url, **env)
        wait_for(lambda: opik.requests, what="shipping under way")
        daemon.kill()
        assert not set(newest(records)) <= opik.ids()  # killed mid-way
        opik.delay_s = 0
        daemon = DaemonProcess(home, upstream.url, **env)
        try:
            wait_for(lambda: daemon.stats()["queue"] == IDLE, timeout_s=60, what="everything shipped")
            assert daemon.stats()["opik"]["endpoints"] == ("batch" if auth == "api_key" else "device_token")
        finally:
            assert daemon.stop() == 0
    assert opik.violations == []
    assert_opik_holds_the_newest(opik, records, device=auth == "device_token")
    if auth == "device_token":
        assert_device_token_only(opik)
        assert all(len(opik.received[trace_id]) == 1 for trace_id in traces)  # a POST again gets 409, then PATCH
    else:
        assert {r.path for r in opik.requests} == {"/v1/private/traces/batch", "/v1/private/spans/batch"}
        for versions in opik.received.values():  # a batch sent again upserts the same versions
            assert all(v in [r["body"] for r in records] for v in versions)
