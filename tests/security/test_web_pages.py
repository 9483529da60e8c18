"""Issue 12, items 2 and 3: no web page drives the gateway, no loose Host reaches any listener.

A page in the user's browser can send a "simple" cross-site POST (`Content-Type: text/plain`)
to 127.0.0.1:9909 without a preflight, or rebind a name it controls to 127.0.0.1. Each such
request is refused 403 in Anthropic's error shape, never reaches the upstream and is never
captured. Claude Code sends none of the signs a browser sends: the recorded corpus proves it,
and it still flows through byte for byte with either Host Claude Code may send.

The gateway's checks run against it in process, as the daemon assembles it (tests/wire/conftest.py);
the daemon itself where more than the gateway is tested: nothing on disk, every listener, the viewer.
"""

import http.client
import io
import json

import pytest

from opik_cipx.wire.gateway import browser_or_stranger
from opik_cipx.wire.loopback import loopback_host
from tests.claude_code_corpus import SCENARIOS, requests, response
from tests.conftest import wait_for
from tests.fake_anthropic import fixture_reply
from tests.security.conftest import raw_exchange

CROSS_SITE_POST = (
    b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nOrigin: http://evil.com\r\n"
    b"Content-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b"
)
PAYLOAD = b'{"model":"claude-opus-4-8","max_tokens":1,"messages":[{"role":"user","content":"planted by evil.com"}]}'


def refused_in_anthropic_shape(answer: bytes) -> dict:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 "), head
    assert b"Content-Type: application/json" in head
    doc = json.loads(body)
    assert doc["type"] == "error" and doc["error"]["type"] == "permission_error"
    assert doc["error"]["message"].startswith("opik-cipx: ")
    return doc


def test_a_cross_site_text_plain_post_is_refused_not_forwarded_not_captured(daemon, upstream):
    answer = raw_exchange(daemon.port, CROSS_SITE_POST % (daemon.port, len(PAYLOAD), PAYLOAD))
    assert "web pages" in refused_in_anthropic_shape(answer)["error"]["message"]
    wait_for(lambda: daemon.counter("requests_refused") == 1, what="refusal counted")
    assert upstream.seen == []
    stats = daemon.stats()
    assert stats["counters"]["requests_captured"] == 0
    assert not list((daemon.home / "captures").glob("*.jsonl.gz"))


@pytest.mark.parametrize("headers", [
    {"Origin": "null"},  # a sandboxed iframe or a file:// page
    {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},  # <img>/<form> without Origin
    {"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"},  # the URL typed into the address bar
    {"Sec-Fetch-Mode": "navigate"},
    {"Host": "evil.com:9909"},  # DNS rebinding: the page's own name, now resolving to 127.0.0.1
    {"Host": "127.0.0.1.nip.io"},
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_browser_and_rebinding_requests_are_refused(wire, upstream, headers):
    conn = http.client.HTTPConnection("127.0.0.1", wire.port, timeout=10)
    conn.putrequest("POST", "/v1/messages", skip_host="Host" in headers)
    for name, value in {"Content-Type": "application/json", **headers}.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", str(len(PAYLOAD)))
    conn.endheaders(PAYLOAD)
    resp = conn.getresponse()
    assert resp.status == 403
    assert json.loads(resp.read())["error"]["message"].startswith("opik-cipx: ")
    assert upstream.seen == []
    assert wire.captures == [] and wire.counter("requests_refused") == 1  # not captured, counted


def test_a_cors_preflight_is_refused_so_the_browser_never_sends_the_call(wire, upstream):
    answer = raw_exchange(wire.port, b"OPTIONS /v1/messages HTTP/1.1\r\nHost: localhost:%d\r\nOrigin: https://evil.com\r\n"
                          b"Access-Control-Request-Method: POST\r\n\r\n" % wire.port)
    refused_in_anthropic_shape(answer)
    assert b"Access-Control-Allow-Origin" not in answer
    assert upstream.seen == []


def test_node_fetch_which_sends_sec_fetch_mode_cors_alone_is_served(wire, upstream):
    conn = http.client.HTTPConnection("127.0.0.1", wire.port, timeout=10)
    conn.request("POST", "/v1/messages", body=b"{}", headers={"Sec-Fetch-Mode": "cors"})
    assert conn.getresponse().status == 200
    assert len(upstream.seen) == 1


def test_an_absolute_form_target_is_refused(wire, upstream):
    answer = raw_exchange(wire.port, b"GET http://evil.com/steal HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % wire.port)
    assert "must be a path" in refused_in_anthropic_shape(answer)["error"]["message"]
    assert upstream.seen == []


LOOSE_HOSTS = {
    "userinfo": b"Host: localhost:%(port)d@evil\r\n",
    "junk-port": b"Host: localhost:x@evil.com\r\n",
    "two-first-ok": b"Host: 127.0.0.1:%(port)d\r\nHost: evil.com\r\n",  # two Host headers, the first loopback
    "two-last-ok": b"Host: evil.com\r\nHost: 127.0.0.1:%(port)d\r\n",
    "none": b"",  # none at all
}


def test_every_listener_refuses_a_loose_host(daemon, upstream):
    ports = daemon.state["ports"]
    cookie = daemon.viewer_cookie()["Cookie"].encode()
    for kind, host in LOOSE_HOSTS.items():
        for name, path, extra in (("admin", b"/admin/stats", b""),
                                  ("viewer", b"/api/calls", b"Cookie: " + cookie + b"\r\n"),
                                  ("claude_code", b"/v1/messages", b"")):
            port = ports[name] if name != "claude_code" else daemon.port
            answer = raw_exchange(port, b"GET %b HTTP/1.1\r\n%b%b\r\n" % (path, host % {b"port": port}, extra))
            assert answer.startswith(b"HTTP/1.1 403 "), (kind, name, answer[:200])
    assert upstream.seen == []
    stats = daemon.stats()  # every listener counts its refusals, not only the gateway
    every = len(LOOSE_HOSTS)
    assert stats["refusals"] == {"admin": {"403": every}, "viewer": {"403": every}, "claude_code": {"403": every}}
    assert stats["counters"]["requests_refused"] == 3 * every


def test_viewer_requests_without_the_token_are_refused_and_counted(daemon):
    viewer = daemon.state["ports"]["viewer"]
    for target in (b"/api/calls", b"/?token=" + b"x" * 43):  # none, then a wrong one
        answer = raw_exchange(viewer, b"GET %b HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % (target, viewer))
        assert answer.startswith(b"HTTP/1.1 403 ") and b"Run `opik-cipx viewer`" in answer, answer[:200]
    stats = daemon.stats()
    assert stats["refusals"] == {"viewer": {"403": 2}} and stats["counters"]["requests_refused"] == 2
    token = (daemon.home / "viewer.token").read_text().strip()
    assert token not in (daemon.home / "logs" / "cipx.log").read_text()


def base_url_requests() -> list[tuple[str, str, dict]]:
    """Every request Claude Code sent to ANTHROPIC_BASE_URL in the corpus (not those it sent through
    HTTPS_PROXY straight to api.anthropic.com, which never meet the proxy)."""
    return [(scenario, number, req) for scenario in SCENARIOS for number, req in requests(scenario)
            if req["headers"].get("Host", req["headers"].get("host", "")).startswith("127.0.0.1:")]


def test_claude_code_sends_none_of_the_signs_of_a_browser():
    recorded = base_url_requests()
    assert len(recorded) == 85  # every scenario, count_tokens and HEAD preconnects included
    for scenario, number, req in recorded:
        names = {name.lower() for name in req["headers"]}
        browser = {"origin", "referer", "sec-fetch-site", "sec-fetch-mode", "sec-fetch-dest"}
        assert not names & browser, (scenario, number)
        headers = http.client.parse_headers(io.BytesIO(
            "".join(f"{k}: {v}\r\n" for k, v in req["headers"].items()).encode() + b"\r\n"))
        assert browser_or_stranger(req["path"], headers) is None, (scenario, number)  # Host included
        for host in ("localhost:9909", "127.0.0.1:9909"):
            assert loopback_host([host])


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_the_recorded_corpus_still_flows_byte_identically(wire, upstream, host):
    recorded = base_url_requests()
    conn = http.client.HTTPConnection("127.0.0.1", wire.port, timeout=30)
    for scenario, number, req in recorded:
        upstream.script(fixture_reply(response(scenario, number)))
        conn.putrequest(req["method"], req["path"], skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", f"{host}:{wire.port}")
        for name, value in req["headers"].items():
            if name.lower() not in ("host", "connection", "content-length"):
                conn.putheader(name, value)
        body = req["body"].encode()
        if body or "Content-Length" in req["headers"] or "content-length" in req["headers"]:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        got = resp.read()
        expected = response(scenario, number)
        assert resp.status == expected["status"], (scenario, number)
        if req["method"] != "HEAD":
            assert got == expected["body"].encode(), (scenario, number)
        assert upstream.seen[-1].body == body, (scenario, number)
        assert upstream.seen[-1].path == req["path"]
    assert len(upstream.seen) == len(recorded)
    assert wire.counter("requests_refused") == 0
    wait_for(lambda: len(wire.captures) == len(recorded), what="every exchange teed")  # after its answer
