"""The follower in-process: log order, reading the log back, the checkpoint, restarts, retention.

Real capture log, real spool and real materializer under tmp_path; the recorded corpus as input.
The wire's side is played by a `CaptureStore` and the notes it would send over the link.
(The daemon-level crash tests, with a real `kill -9`, are in tests/test_recovery.py and
tests/test_work_process.py.)
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
from opik_cipx.store.capture_keeper import LogKeeper
from opik_cipx.store.captures import CaptureStore, LogPosition, encode_member, list_segments
from opik_cipx.store.spool import Spool
from tests.claude_code_corpus import exchanges
from tests.conftest import wait_for

BIG = 10**9


class Daemonish:
    """The pieces the work process wires around a follower, on one home directory, and the wire's
    capture log beside it."""

    def __init__(self, home: Path, keep: bool = True, inmem_max: int = 10_000, skip=None, clock=None):
        self.home = home
        self.counters = Counters()
        self.store = CaptureStore(home / "captures", segment_bytes=200_000, keep=keep)
        self.spool = Spool(home / "spool", max_bytes=BIG, segment_bytes=10**7, inmem_max=inmem_max,
                           inmem_max_bytes=BIG, commit_interval_s=0.01)
        config = MaterializerConfig("claude-code", True, 500_000, home / "sessions", home / "none.json")
        self.listed: list[str] = []
        self.runs: list[tuple[list[str], int]] = []  # each run's captures, and what was counted before it
        self.working: list = []
        keeper = LogKeeper(home / "captures", max_bytes=BIG, max_age_s=BIG, keep=keep)
        self.follower = Follower(Materializer(config, load_price_table()), keeper, self.spool, self.counters,
                                 home / "materializer" / "checkpoint.json",
                                 self._listen,
                                 on_working=self.working.append, **({"clock": clock} if clock else {}))
        self.spool.start()
        self.follower.start_at(self.store.tail(), self.store.start_end.segment, skip)

    def _listen(self, run) -> None:
        self.runs.append(([capture.id for capture, _ in run], self.counters.get("events_materialized")))
        self.listed.extend(capture.id for capture, _ in run)

    def capture(self, capture, note: bool = True):
        """What the wire's capture thread does (optionally its note to the work process lost)."""
        appended = self.store.append(capture)
        if note:
            self.follower.note(appended.tail)
        return appended

    def stop(self) -> None:
        self.store.close()
        self.follower.note(self.store.tail())
        assert self.follower.stop(timeout_s=20)
        assert self.spool.close(timeout_s=5) == 0


def at_end(position: LogPosition, end: LogPosition) -> bool:
    """`position` is where the log ends: at `end`, or, once the segment `end` is in was sealed and
    read to its end, at the start of the next one (the follower may be at either)."""
    return position == end or position == LogPosition(end.segment + 1, 0)


def spooled(home: Path) -> list[dict]:
    return [json.loads(line) for path in sorted((home / "spool").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


def straight(scenario: str, tmp_path: Path) -> list[dict]:
    config = MaterializerConfig("claude-code", True, 500_000, tmp_path / "sessions", tmp_path / "none.json")
    materializer = Materializer(config, load_price_table())
    return [r for _, c in exchanges(scenario) for r in materializer.materialize(c).records]


def key(records: list[dict]) -> set[str]:
    return {json.dumps(r, sort_keys=True) for r in records}


def test_captures_noted_or_not_are_materialized_in_log_order(tmp_path):
    d = Daemonish(tmp_path / "home")
    captured = exchanges("subagent")
    for i, (_, capture) in enumerate(captured):
        d.capture(capture, note=i % 2 == 0)  # every other note lost: found in the log all the same
    wait_for(lambda: len(d.listed) == len(captured), what="every capture materialized")
    assert d.listed == [c.id for _, c in captured]
    # A note can arrive after the follower read its captures from the log: they count as waiting
    # until its next pass, which that note starts, finds nothing new and sets the lag right.
    wait_for(lambda: d.follower.section() == {"lag_events": 0, "inflight_raw": 0}, what="no lag left")
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
    assert LogPosition(**checkpoint["position"]) > LogPosition(1, 0) and checkpoint["state"]["sessions"]
    logged_meanwhile = CaptureStore(home / "captures", segment_bytes=200_000)
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
    (home / "captures").mkdir(parents=True)
    legacy = home / "captures" / "20260101T000000-99-0001.jsonl.gz"
    legacy.write_bytes(encode_member(exchanges("simple")[1][1], 0))
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


def test_a_stop_materializes_the_log_up_to_where_the_wire_said_it_ends(tmp_path):
    d = Daemonish(tmp_path)
    captures = [capture for _, capture in exchanges("tools")]
    for capture in captures:
        d.capture(capture, note=False)  # the follower has not looked yet
    d.store.close()
    d.follower.note(d.store.tail())  # the wire's stop says where the log ends ...
    assert d.follower.stop(timeout_s=20)  # ... and the follower gets there before it stops
    assert d.listed == [capture.id for capture in captures]
    checkpoint = read_json(tmp_path / "materializer" / "checkpoint.json")
    assert at_end(LogPosition(**checkpoint["position"]), d.store.end)
    assert d.spool.close(timeout_s=5) == 0


def test_the_wire_learns_which_capture_is_being_materialized(tmp_path):
    d = Daemonish(tmp_path)
    appended = [d.capture(capture) for _, capture in exchanges("simple")]
    wait_for(lambda: len(d.listed) == len(appended), what="materialized")
    d.stop()
    assert d.working == [position for a in appended for position in (a.start, None)]


def test_a_capture_the_work_process_died_on_twice_is_passed_over(tmp_path):
    home = tmp_path / "home"
    captured = [capture for _, capture in exchanges("tools")]
    store = CaptureStore(home / "captures", segment_bytes=200_000)
    appended = [store.append(capture) for capture in captured]
    store.close()
    d = Daemonish(home, skip={appended[2].start})
    wait_for(lambda: len(d.listed) == len(captured) - 1, what="the others materialized")
    d.stop()
    assert d.listed == [c.id for i, c in enumerate(captured) if i != 2]
    assert d.counters.get("materializer_errors_total") == 1
    assert d.follower.lag == 0


def test_captures_found_together_reach_the_listener_in_runs_each_counted_after_it(tmp_path, monkeypatch):
    monkeypatch.setattr(follower_module, "BATCH_MAX", 3)
    monkeypatch.setattr(follower_module, "BATCH_MAX_S", 3600.0)  # runs end by their count alone here
    home = tmp_path / "home"
    captured = [capture.id for _, capture in exchanges("tools")]
    store = CaptureStore(home / "captures", segment_bytes=200_000)
    for _, capture in exchanges("tools"):
        store.append(capture)  # in the log before the follower starts: one catch-up finds them all
    store.close()
    d = Daemonish(home)
    wait_for(lambda: len(d.listed) == len(captured), what="every capture materialized")
    d.stop()
    assert len(captured) > 6
    assert [ids for ids, _ in d.runs] == [captured[at : at + 3] for at in range(0, len(captured), 3)]
    # The ledger has each run before it counts as materialized (what `events_materialized` waits mean).
    assert [counted for _, counted in d.runs] == list(range(0, len(captured), 3))
    assert d.counters.get("events_materialized") == len(captured)
