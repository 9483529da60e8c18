"""Error reports from the real daemon: a forced materializer error and a crash at startup reach a
fake Sentry (real HTTP on loopback) as envelopes holding no prompt, header, key or path; with
CIPX_SENTRY=off nothing is sent."""

import http.client
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, DaemonProcess, cli_env, load_fixture, wait_for
from tests.fake_anthropic import fixture_reply
from tests.fake_sentry import FakeSentry
from tests.forced_errors import PLANTED_KEY

API_KEY = "sk-ant-api03-the-users-real-key"
SESSION_HEADER = "4cec060d-b129-4e6b-8778-2bf1e55e29e3"


@pytest.fixture
def sentry():
    with FakeSentry() as fake:
        yield fake


def send_recorded_call(daemon: DaemonProcess, upstream) -> str:
    """One recorded Claude Code call with the user's key; the prompt text it carries."""
    request, response = load_fixture("simple", "001")
    upstream.script(fixture_reply(response))
    headers = {k: v for k, v in request["headers"].items() if k.lower() not in ("host", "content-length")}
    headers["x-api-key"] = API_KEY
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("POST", request["path"], body=request["body"].encode(), headers=headers)
    assert conn.getresponse().read()
    [prompt] = [block["text"] for message in json.loads(request["body"])["messages"]
                if message["role"] == "user" and isinstance(message["content"], list)
                for block in message["content"] if block["type"] == "text" and not block["text"].startswith("<")]
    assert prompt == "say hello"
    return prompt


def test_a_materializer_error_reaches_sentry_without_any_data(home, upstream, sentry):
    daemon = DaemonProcess(home, upstream.url, module="tests.forced_errors", FORCED_ERROR="materializer",
                           CIPX_SENTRY_DSN=sentry.dsn("pub-9"))
    try:
        prompt = send_recorded_call(daemon, upstream)
        wait_for(lambda: sentry.envelopes, what="the error report")
        assert daemon.counter("materializer_errors_total") == 1
        section = wait_for(lambda: (s := daemon.stats()["telemetry"])["sent"] == 1 and s, what="sent counted")
        assert section["enabled"] is True
        assert section["reason"].startswith("on (CIPX_SENTRY_DSN: error reports go to 127.0.0.1")
    finally:
        daemon.stop()
    [report] = sentry.envelopes
    assert sentry.violations == [] and "sentry_key=pub-9" in report.headers["X-Sentry-Auth"]
    raw = report.raw.decode()
    for leak in (prompt, API_KEY, PLANTED_KEY, SESSION_HEADER, "cannot attribute", str(home), str(home.parent),
                 str(REPO), "claude-cli/"):
        assert leak not in raw, leak
    [value] = report.event["exception"]["values"]
    assert value["type"] == "ValueError" and "value" not in value
    ours = [(f["module"], f["function"], f.get("filename")) for f in value["stacktrace"]["frames"] if f["in_app"]]
    assert ("opik_cipx.materialize.follower", "Follower._materialize", "opik_cipx/materialize/follower.py") in ours
    assert ("opik_cipx.materialize.materializer", "Materializer.materialize",
            "opik_cipx/materialize/materializer.py") in ours
    assert report.event["logger"] == "opik_cipx.materialize.follower"


def test_with_the_off_switch_nothing_is_sent(home, upstream, sentry):
    daemon = DaemonProcess(home, upstream.url, module="tests.forced_errors", FORCED_ERROR="materializer",
                           CIPX_SENTRY_DSN=sentry.dsn(), CIPX_SENTRY="off")
    try:
        send_recorded_call(daemon, upstream)
        wait_for(lambda: daemon.counter("materializer_errors_total") == 1, what="the forced error")
        assert daemon.stats()["telemetry"] == {"enabled": False, "reason": "off (CIPX_SENTRY=off)", "sent": 0,
                                               "dropped": 0, "suppressed": 0, "last_error": None}
    finally:
        assert daemon.stop() == 0  # a clean stop flushes whatever would have been queued
    assert sentry.posts == 0


def test_a_crash_at_startup_is_reported_before_the_daemon_exits(home, upstream, sentry):
    env = cli_env(home, CIPX_UPSTREAM_URL=upstream.url, FORCED_ERROR="startup", CIPX_SENTRY_DSN=sentry.dsn())
    result = subprocess.run([sys.executable, "-m", "tests.forced_errors", "proxy", "--port", "0"], env=env,
                            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "opik-cipx crashed" in result.stderr
    assert not (home / "state.json").exists()
    [report] = sentry.envelopes  # sent before the process exited
    assert report.event["logger"] == "opik_cipx.daemon"
    assert report.event["exception"]["values"][-1]["type"] == "RuntimeError"
    assert str(home.parent) not in report.raw.decode() and "planted crash" not in report.raw.decode()
