"""Error reports: what an event holds (and never holds), the envelope, and the sender's bounds.

The sender runs against tests/fake_sentry.py (real HTTP on loopback); the daemon-level tests
(a forced materializer error, a crash at startup, the off switch) are in test_daemon_telemetry.py.
"""

import email.utils
import errno
import json
import logging
import threading

import pytest

from opik_cipx import telemetry
from opik_cipx.config import load_settings
from opik_cipx.telemetry import OFF_SWITCH, ON, OPT_IN, Reporter, build_event, describe, envelope, fingerprint
from tests.claude_code_corpus import corpus_clock
from tests.conftest import REPO, wait_for
from tests.fake_sentry import FakeSentry, parse_envelope

SECRET = "sk-ant-api03-SECRET-in-a-local"
PROMPT = "please refactor my db_password=hunter2 module"


def settings_for(tmp_path, **env):
    return load_settings({"CIPX_HOME": str(tmp_path / "h"), "CIPX_CONFIG": str(tmp_path / "none.toml"), **env})


def raise_nested(path: str):
    api_key = SECRET  # noqa: F841 - a local the report must not carry
    try:
        raise OSError(errno.ENOSPC, "No space left on device", path)
    except OSError as exc:
        raise ValueError(f"cannot store {PROMPT}") from exc


def caught() -> BaseException:
    try:
        raise_nested("/home/ada/.opik-cipx/captures/x.jsonl.gz")
    except ValueError as exc:
        return exc


def test_an_event_holds_types_frames_and_versions_and_no_data():
    event = build_event(caught(), "opik_cipx.wire.tee", telemetry.runtime_environment(), 1_800_000_000.0)
    text = json.dumps(event)
    for leak in (SECRET, "hunter2", "refactor", "/home/ada", "No space left", "x.jsonl.gz", __file__):
        assert leak not in text, leak
    cause, outer = event["exception"]["values"]
    assert (cause["type"], cause["module"], cause["value"]) == ("OSError", "builtins", "ENOSPC")
    assert outer["type"] == "ValueError" and "value" not in outer
    frames = outer["stacktrace"]["frames"]
    assert [(f["module"], f["function"]) for f in frames] == [(__name__, "caught"),
                                                              (__name__, "raise_nested")]
    assert all(set(f) == {"module", "function", "lineno", "in_app"} and not f["in_app"] for f in frames)
    assert event["logger"] == "opik_cipx.wire.tee" and event["level"] == "error"
    assert event["release"] == f"opik-cipx@{telemetry.__version__}"
    assert set(event["contexts"]) == {"os", "runtime"} and event["contexts"]["runtime"]["version"].startswith("3.")
    assert set(event) == {"event_id", "timestamp", "platform", "level", "logger", "release", "sdk", "contexts",
                          "exception"}


def test_our_frames_carry_a_file_name_relative_to_the_package():
    from opik_cipx.config import parse_price_row

    try:
        parse_price_row("prices.x", {"input": "cheap"})
    except ValueError as exc:
        event = build_event(exc, "opik_cipx", {}, 0.0)
    ours = [f for f in event["exception"]["values"][-1]["stacktrace"]["frames"] if f["in_app"]]
    assert ours and all(f["filename"] == "opik_cipx/config.py" for f in ours)
    assert {"parse_price_row", "_price_fields", "_price_rate"} <= {f["function"] for f in ours}


def test_the_envelope_is_three_json_lines_with_the_payload_length():
    event = build_event(caught(), "opik_cipx.x", {}, 0.0)
    header, item, payload = parse_envelope(envelope(event, 1_800_000_000.0))
    assert header["event_id"] == event["event_id"] and header["sent_at"].endswith("Z")
    assert item["type"] == "event" and payload == event


def test_the_same_error_has_the_same_fingerprint():
    first, second = (build_event(caught(), "opik_cipx.x", {}, 0.0) for _ in range(2))
    assert fingerprint(first) == fingerprint(second)
    assert fingerprint(first) != fingerprint(build_event(caught(), "opik_cipx.y", {}, 0.0))


def test_status_words_for_each_setting(tmp_path):
    assert describe(settings_for(tmp_path)) == (False, OPT_IN)
    dsn = "https://k@o7.ingest.sentry.io/3"
    assert describe(settings_for(tmp_path, CIPX_SENTRY_DSN=dsn, CIPX_SENTRY="off")) == (False, OFF_SWITCH)
    enabled, reason = describe(settings_for(tmp_path, CIPX_SENTRY_DSN=dsn))
    assert enabled
    assert reason == "on (CIPX_SENTRY_DSN: error reports go to o7.ingest.sentry.io; CIPX_SENTRY=off stops them)"


def test_status_readme_skill_and_docs_tell_one_story():
    table = (REPO / "docs" / "TELEMETRY.md").read_text()
    for words in (OPT_IN, OFF_SWITCH, ON.format(host="<host>")):
        assert f"`telemetry {words}`" in table, words
    for doc in (REPO / "README.md", REPO / "skills" / "opik-cipx" / "SKILL.md"):
        text = " ".join(doc.read_text().split())
        assert "off unless" in text and "`CIPX_SENTRY_DSN`" in text and "`CIPX_SENTRY=off`" in text, doc
        assert "status` says `telemetry on` or `off` and why" in text, doc


@pytest.fixture
def sentry():
    with FakeSentry() as fake:
        yield fake


@pytest.fixture
def reporter_for(tmp_path):
    started = []

    def make(dsn: str, clock=None, **env) -> Reporter:
        reporter = telemetry.start(settings_for(tmp_path, CIPX_SENTRY_DSN=dsn, **env), clock=clock or corpus_clock())
        started.append(reporter)
        return reporter

    yield make
    for reporter in started:
        reporter.stop(0)  # no handler left behind; a sender stuck on a hanging endpoint ends on its own


def log_error(where: str = "opik_cipx.materialize.materializer") -> None:
    try:
        raise_nested("/home/ada/x")
    except ValueError:
        logging.getLogger(where).exception("stage failed on %s", PROMPT)


def test_a_logged_exception_arrives_once_with_the_dsn_key(sentry, reporter_for):
    reporter = reporter_for(sentry.dsn("pub-123"))
    log_error()
    wait_for(lambda: sentry.envelopes, what="an envelope")
    [got] = sentry.envelopes
    assert "sentry_key=pub-123" in got.headers["X-Sentry-Auth"] and "sentry_version=7" in got.headers["X-Sentry-Auth"]
    assert got.headers["Content-Type"] == "application/x-sentry-envelope"
    assert got.event["logger"] == "opik_cipx.materialize.materializer"
    assert PROMPT.encode() not in got.raw and b"hunter2" not in got.raw
    log_error()  # the same error again: reported once per REPEAT_S
    wait_for(lambda: reporter.section()["suppressed"] == 1, what="the repeat suppressed")
    wait_for(lambda: reporter.section()["sent"] == 1, what="sent counted once Sentry answered")
    assert reporter.section() | {"reason": None} == {"enabled": True, "reason": None, "sent": 1, "dropped": 0,
                                                    "suppressed": 1, "last_error": None}
    assert sentry.violations == []


def test_a_burst_of_distinct_errors_is_rate_limited(sentry, reporter_for):
    reporter = reporter_for(sentry.dsn())
    for i in range(telemetry.BURST + 3):
        log_error(f"opik_cipx.stage{i}")
    wait_for(lambda: reporter.section()["sent"] == telemetry.BURST, what="the burst sent")
    assert reporter.section()["suppressed"] == 3 and len(sentry.envelopes) == telemetry.BURST


def test_a_failing_endpoint_is_retried_a_bounded_number_of_times_then_dropped(sentry, reporter_for):
    sentry.answers = [500] * 10
    clock = corpus_clock()
    reporter = reporter_for(sentry.dsn(), clock)
    log_error()
    for wait_s in telemetry.RETRY_WAITS_S:  # each retry after its wait, on the reporter's clock
        wait_for(lambda: clock.waiting(reporter.name) == wait_s, what=f"a retry waiting {wait_s}s")  # noqa: B023 - waited on here
        clock.advance(wait_s)
    wait_for(lambda: reporter.section()["dropped"] == 1, what="the report dropped")
    assert sentry.posts == 1 + len(telemetry.RETRY_WAITS_S)
    assert reporter.section()["last_error"] == "Sentry answered HTTP 500"


def test_a_429_silences_reports_for_its_retry_after_also_as_an_http_date(sentry, reporter_for):
    clock = corpus_clock()
    sentry.answers = [429]
    sentry.retry_after = email.utils.formatdate(clock.time() + 600, usegmt=True)
    reporter = reporter_for(sentry.dsn(), clock)
    log_error("opik_cipx.a")
    wait_for(lambda: reporter.section()["dropped"] == 1, what="the 429 dropped")
    clock.advance(599)
    log_error("opik_cipx.b")  # Sentry asked for ten minutes: dropped without a request
    wait_for(lambda: reporter.section()["dropped"] == 2, what="the silenced one dropped")
    clock.advance(2)
    log_error("opik_cipx.c")
    wait_for(lambda: reporter.section()["sent"] == 1, what="sent once the ten minutes are over")
    assert sentry.posts == 2


def test_a_refused_dsn_is_not_retried_and_429_silences_reports(sentry, reporter_for):
    sentry.answers = [403, 429]
    sentry.retry_after = "120"
    reporter = reporter_for(sentry.dsn())
    log_error("opik_cipx.a")
    wait_for(lambda: reporter.section()["dropped"] == 1, what="the 403 dropped")
    log_error("opik_cipx.b")
    wait_for(lambda: reporter.section()["dropped"] == 2, what="the 429 dropped")
    log_error("opik_cipx.c")  # inside Retry-After: dropped without a request
    wait_for(lambda: reporter.section()["dropped"] == 3, what="the silenced one dropped")
    assert sentry.posts == 2 and reporter.section()["sent"] == 0


def test_closing_never_waits_on_a_hanging_endpoint_and_the_queue_is_bounded(sentry, reporter_for, monkeypatch):
    monkeypatch.setattr(telemetry, "BURST", 100)
    sentry.hang = True
    reporter = reporter_for(sentry.dsn())
    for i in range(telemetry.QUEUE_MAX + 5):
        log_error(f"opik_cipx.stage{i}")
    assert reporter.section()["dropped"] >= 4  # one is being posted, QUEUE_MAX wait, the rest are dropped
    stopped = []
    stopper = threading.Thread(target=lambda: stopped.append(reporter.stop(0.3)), name="stopper")
    stopper.start()
    wait_for(lambda: reporter.clock.waiting("stopper") is not None, what="stop waiting for the sender")
    reporter.clock.advance(0.3)  # a bounded wait on the reporter's clock, never the endpoint's
    stopper.join(5)
    assert stopped == [False] and not stopper.is_alive()


def test_off_means_no_handler_and_nothing_sent(sentry, reporter_for):
    reporter = reporter_for(sentry.dsn(), CIPX_SENTRY="off")
    log_error()
    assert reporter.section()["enabled"] is False and reporter.section()["reason"] == OFF_SWITCH
    assert not any(isinstance(h, telemetry._Handler) for h in logging.getLogger("opik_cipx").handlers)
    assert sentry.posts == 0 and reporter.section()["suppressed"] == 0  # never even looked at
