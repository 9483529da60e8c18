"""The follower in-process: log order, catching up from disk, the checkpoint, restarts, retention.

Real capture log, real spool and real materializer under tmp_path; the recorded corpus as input.
(The daemon-level crash tests, with a real `kill -9`, are in tests/test_recovery.py.)
"""

import errno
import json
import os
import threading
from pathlib import Path

from opik_cipx.home import read_json
from opik_cipx.materialize import follower as follower_module
from opik_cipx.materialize.follower import Follower
from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.stats import Counters
from opik_cipx.store.captures import CaptureStore, LogPosition, list_segments
from opik_cipx.store.spool import Spool
from tests.claude_code_corpus import corpus_clock, exchanges
from tests.conftest import wait_for

BIG = 10**9


class Daemonish:
    """The pieces the daemon wires around a follower, on one home directory."""

    def __init__(self, home: Path, keep: bool = True, inmem_max: int = 10_000, wire_idle=None, clock=None):
        self.home = home
        self.counters = Counters()
        self.store = CaptureStore(home / "captures", max_bytes=BIG, max_age_s=BIG, segment_bytes=200_000, keep=keep)
        self.spool = Spool(home / "spool", max_bytes=BIG, segment_bytes=10**7, inmem_max=inmem_max,
                           inmem_max_bytes=BIG, commit_interval_s=0.01)
        config = MaterializerConfig("claude-code", True, 500_000, home / "sessions", home / "none.json")
        self.listed: list[str] = []
        self.follower = Follower(Materializer(config, load_price_table()), self.store, self.spool, self.counters,
                                 home / "materializer" / "checkpoint.json",
                                 lambda capture, records: self.listed.append(capture.id), wire_idle,
                                 **({"clock": clock} if clock else {}))
        self.spool.start()
        self.follower.start()

    def capture(self, capture, handoff: bool = True) -> None:
        """What the capture thread does (optionally losing the in-memory handoff)."""
        appended = self.store.append(capture)
        if handoff:
            self.follower.handoff(capture, appended)

    def stop(self) -> None:
        assert self.follower.stop(timeout_s=20)
        assert self.spool.close(timeout_s=5) == 0
        self.store.close()


def spooled(home: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((home / "spool").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def straight(scenario: str, tmp_path: Path) -> list[dict]:
    config = MaterializerConfig("claude-code", True, 500_000, tmp_path / "sessions", tmp_path / "none.json")
    materializer = Materializer(config, load_price_table())
    return [r for _, c in exchanges(scenario) for r in materializer.materialize(c).records]


def key(records: list[dict]) -> set[str]:
    return {json.dumps(r, sort_keys=True) for r in records}


def test_captures_handed_over_or_not_are_materialized_in_log_order(tmp_path):
    d = Daemonish(tmp_path / "home")
    captured = exchanges("subagent")
    for i, (_, capture) in enumerate(captured):
        d.capture(capture, handoff=i % 2 == 0)  # every other handoff lost: read back from the log
    wait_for(lambda: len(d.listed) == len(captured), what="every capture materialized")
    assert d.listed == [c.id for _, c in captured]
    assert d.follower.section() == {"lag_events": 0, "inflight_raw": 0}
    d.stop()
    assert spooled(d.home) == straight("subagent", tmp_path)


def test_a_restart_resumes_after_the_checkpoint_with_the_same_records(tmp_path):
    home = tmp_path / "home"
    captured = exchanges("tools")
    first = Daemonish(home)
    for _, capture in captured[:4]:
        first.capture(capture)
    wait_for(lambda: len(first.listed) == 4, what="four materialized")
    first.stop()
    checkpoint = read_json(home / "materializer" / "checkpoint.json")
    assert checkpoint["position"]["offset"] > 0 and checkpoint["state"]["sessions"]
    logged_meanwhile = CaptureStore(home / "captures", max_bytes=BIG, max_age_s=BIG, segment_bytes=200_000)
    for _, capture in captured[4:]:
        logged_meanwhile.append(capture)  # in the log, never materialized (the daemon died)
    logged_meanwhile.close()
    second = Daemonish(home)
    wait_for(lambda: len(second.listed) == len(captured) - 4, what="the rest materialized at start")
    assert second.listed == [c.id for _, c in captured[4:]]
    second.stop()
    assert spooled(home) == straight("tools", tmp_path)  # one trace, the same ids, nothing twice


def test_a_lost_checkpoint_means_the_whole_log_again_which_only_upserts(tmp_path):
    home = tmp_path / "home"
    first = Daemonish(home)
    for _, capture in exchanges("mcp"):
        first.capture(capture)
    wait_for(lambda: len(first.listed) == len(exchanges("mcp")), what="materialized")
    first.stop()
    (home / "materializer" / "checkpoint.json").unlink()
    second = Daemonish(home)
    wait_for(lambda: len(second.listed) == len(exchanges("mcp")), what="materialized again")
    second.stop()
    records = spooled(home)
    assert len(records) == 2 * len(straight("mcp", tmp_path)) and key(records) == key(straight("mcp", tmp_path))


def test_the_first_start_leaves_captures_of_older_versions_alone(tmp_path):
    home = tmp_path / "home"
    old = CaptureStore(home / "captures", max_bytes=BIG, max_age_s=BIG, segment_bytes=BIG)
    appended = old.append(exchanges("simple")[1][1])
    old.close()
    appended.path.rename(appended.path.with_name("20260101T000000-99-0001.jsonl.gz"))
    d = Daemonish(home)
    d.capture(exchanges("tools")[0][1])
    wait_for(lambda: d.listed, what="the new capture materialized")
    d.stop()
    assert d.listed == [exchanges("tools")[0][1].id]


def test_captures_off_keeps_a_capture_only_until_a_checkpoint_covers_it(tmp_path):
    home = tmp_path / "home"
    d = Daemonish(home, keep=False)
    for _, capture in exchanges("simple"):
        d.capture(capture)
    wait_for(lambda: len(d.listed) == 2, what="materialized")
    wait_for(lambda: list_segments(home / "captures") == [], timeout_s=10, what="captures deleted once checkpointed")
    d.stop()
    assert spooled(home) == straight("simple", tmp_path)


def test_a_full_spool_makes_the_follower_wait_instead_of_dropping(tmp_path, monkeypatch):
    monkeypatch.setattr(follower_module, "SPOOL_WAIT_S", 0.05)
    home = tmp_path / "home"
    d = Daemonish(home, inmem_max=3)  # fewer records than one capture makes: room only when empty
    disk_full = threading.Event()
    disk_full.set()
    real_fsync = os.fsync

    def fsync(fd):
        if disk_full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)  # the disk refuses everything for now
    for _, capture in exchanges("tools"):
        d.capture(capture)
    wait_for(lambda: d.listed, what="the first capture spooled (alone, into an empty spool)")
    assert d.follower.lag >= 4 and d.spool.section()["dropped_events_inmem"] == 0
    disk_full.clear()  # the disk is back
    d.spool.flush(5)
    wait_for(lambda: len(d.listed) == len(exchanges("tools")), what="the rest, once the spool had room")
    d.stop()
    assert spooled(home) == straight("tools", tmp_path)


def test_the_follower_waits_for_a_quiet_wire_until_it_was_behind_too_long(tmp_path):
    """A wire that never quiets down (a burst that does not end) delays materializing, never
    stops it: once the follower has been behind for BACKLOG_MAX_S, it stops waiting for the wire."""
    clock = corpus_clock()
    waits: list[float] = []
    all_logged = threading.Event()

    def never_quiet(timeout_s: float) -> bool:
        all_logged.wait(10)  # the whole burst is in the log before the follower gets anywhere
        waits.append(timeout_s)
        clock.advance(timeout_s)  # busy for the whole wait
        return False

    d = Daemonish(tmp_path, wire_idle=never_quiet, clock=clock)
    captures = [capture for scenario in ("tools", "subagent") for _, capture in exchanges(scenario)]
    per_capture = follower_module.MAX_DEFER_S + follower_module.PAUSE_MAX_S
    assert len(captures) * per_capture > follower_module.BACKLOG_MAX_S + per_capture
    for capture in captures:
        d.capture(capture)
    all_logged.set()
    wait_for(lambda: len(d.listed) == len(captures), timeout_s=30, what="every capture materialized")
    # It waited for the wire before each capture until it had been behind for BACKLOG_MAX_S, then no more.
    assert follower_module.BACKLOG_MAX_S <= sum(waits) <= follower_module.BACKLOG_MAX_S + per_capture
    assert max(waits) <= follower_module.WIRE_SLICE_S
    assert d.listed == [capture.id for capture in captures]
    assert not d.follower.backlogged and d.follower.lag == 0
    d.stop()


def test_a_stop_reaches_a_follower_that_waits_for_a_busy_wire(tmp_path):
    """The stop request (where the log ends, the deadline) is set with the stop flag under the
    worker's lock, and the follower's wait for the wire looks at it between short slices: a stop
    does not wait for the wire to calm down."""
    waiting, never = threading.Event(), threading.Event()

    def busy_wire(timeout_s: float) -> bool:
        waiting.set()
        return never.wait(timeout_s)  # the wire stays busy for as long as it is asked to wait

    d = Daemonish(tmp_path, wire_idle=busy_wire)
    (_, capture), *_ = exchanges("simple")
    d.capture(capture)
    assert waiting.wait(10)  # the follower waits for the wire before materializing the capture
    assert d.follower.stop(timeout_s=0.5)  # done well within the stop deadline
    assert d.listed == [capture.id]  # materialized at once, then checkpointed
    checkpoint = read_json(tmp_path / "materializer" / "checkpoint.json")
    assert LogPosition(**checkpoint["position"]) == d.store.end
    assert d.spool.close(timeout_s=5) == 0
