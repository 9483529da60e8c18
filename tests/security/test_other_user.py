"""Issue 12, item 1, and issue 22, item 9: another local user gets nothing in, and nothing out.

The `nobody` user sends a prompt through the gateway and asks the admin and viewer listeners:
every listener refuses the connection (the peer's socket is not the owner's) with a 403, nothing
is forwarded, captured or counted as the owner's, and the refusals are counted. A
`db_password=...` goes through the proxy from the owner; `nobody` cannot read the token file,
and the admin stats carry no prompt, no path and no credential (where the peer check does not
exist, on macOS, every local user can read them).
"""

import http.client
import json
import re

from tests.conftest import DaemonProcess, wait_for

SECRET = "db_password=hunter2-7f3a"
API_KEY = "sk-ant-api03-secret-key-for-this-test"
ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=])/[^\s/]+/")


def send_secret(daemon) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    body = json.dumps({"model": "claude-opus-4-8", "max_tokens": 5,
                       "messages": [{"role": "user", "content": f"connect with {SECRET}"}]}).encode()
    conn.request("POST", "/v1/messages?beta=true", body=body,
                 headers={"Content-Type": "application/json", "x-api-key": API_KEY})
    assert conn.getresponse().read()
    wait_for(lambda: daemon.counter("events_materialized") == 1, what="call materialized")


def fetch_as(other_user, url: str, cookie: str | None = None) -> tuple[int, str]:
    headers = {"Cookie": cookie} if cookie else {}
    code = ("import urllib.request, urllib.error\n"
            f"request = urllib.request.Request({url!r}, headers={headers!r})\n"
            "try:\n    r = urllib.request.urlopen(request, timeout=10); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n")
    result = other_user(code)
    status, _, body = result.stdout.partition("\n")
    assert status.isdigit(), result.stderr
    return int(status), body


NOT_OWNER = "serves only the user who runs it"


def test_another_users_prompt_is_refused_by_the_gateway_not_forwarded_nor_captured(daemon, upstream, other_user):
    """Issue 22, item 9: `nobody`'s prompt went into the owner's captures, ledger, dashboard and Opik."""
    code = ("import http.client, json\n"
            f"conn = http.client.HTTPConnection('127.0.0.1', {daemon.port}, timeout=10)\n"
            "conn.request('POST', '/v1/messages?beta=true', body=json.dumps({'model': 'claude-opus-4-8', "
            "'max_tokens': 5, 'messages': [{'role': 'user', 'content': 'nobody asks'}]}), "
            "headers={'Content-Type': 'application/json', 'x-api-key': 'sk-ant-nobody'})\n"
            "resp = conn.getresponse(); print(resp.status); print(resp.read().decode())\n")
    result = other_user(code)
    status, _, body = result.stdout.partition("\n")
    assert status == "403", result.stdout + result.stderr
    assert json.loads(body)["error"]["message"].startswith("opik-cipx: ") and NOT_OWNER in body
    assert upstream.seen == []  # not forwarded
    send_secret(daemon)  # the owner is served as before
    stats = daemon.stats()
    assert stats["counters"]["requests_captured"] == 1 and stats["counters"]["connections_not_owner"] == 1
    assert len(upstream.seen) == 1 and b"nobody asks" not in upstream.seen[0].body


def test_another_user_gets_nothing_from_any_listener(daemon, upstream, other_user):
    send_secret(daemon)
    viewer = f"http://127.0.0.1:{daemon.state['ports']['viewer']}"
    calls = json.loads(http_get(viewer + "/api/calls", daemon.viewer_cookie()))
    capture_id = calls[0]["capture_id"]
    assert SECRET in http_get(f"{viewer}/capture/{capture_id}", daemon.viewer_cookie())  # the owner sees it

    cookie = daemon.viewer_cookie()["Cookie"]  # even with the owner's cookie (replayed from a page of theirs)
    admin = f"http://127.0.0.1:{daemon.admin_port}"
    urls = [viewer + path for path in ("/api/calls", f"/capture/{capture_id}", "/", f"/?token={'x' * 43}")]
    for url in [*urls, admin + "/admin/stats", admin + "/admin/health", admin + "/admin/state"]:
        status, body = fetch_as(other_user, url, cookie if url.startswith(viewer) else None)
        assert status == 403, url
        assert SECRET not in body and "hunter2" not in body and NOT_OWNER in body
    assert daemon.stats()["counters"]["connections_not_owner"] == 7
    token_path = daemon.home / "viewer.token"
    result = other_user(f"print(open({str(token_path)!r}).read())")
    assert result.returncode != 0 and "Permission denied" in result.stderr


def test_admin_stats_carry_no_prompt_path_or_credential(home, upstream, other_user):
    # so the spool fails, with an error that could name a path
    (home / "spool" / "000000000001.jsonl").mkdir(parents=True)
    daemon = DaemonProcess(home, upstream.url)
    try:
        send_secret(daemon)
        check_stats(daemon, other_user)
    finally:
        daemon.kill()  # a clean stop would wait its full 5 s for the spool that cannot be written


def check_stats(daemon, other_user) -> None:
    admin = f"http://127.0.0.1:{daemon.admin_port}"
    assert fetch_as(other_user, admin + "/admin/stats")[0] == 403  # not theirs to read (on Linux)
    text = http_get(admin + "/admin/stats", {})  # what every local user could read where peers are not checked
    token = (daemon.home / "viewer.token").read_text().strip()
    for secret in (SECRET, "hunter2", API_KEY, token, str(daemon.home), str(daemon.home.parent)):
        assert secret not in text
    stats = json.loads(text)
    assert stats["wal"]["last_write_error"] == "cannot open the spool directory: Is a directory"
    assert not [value for value in strings(stats) if ABSOLUTE_PATH.search(value)]


def strings(doc) -> list[str]:
    if isinstance(doc, dict):
        return [s for value in doc.values() for s in strings(value)]
    if isinstance(doc, list):
        return [s for value in doc for s in strings(value)]
    return [doc] if isinstance(doc, str) else []


def http_get(url: str, headers: dict[str, str]) -> str:
    host, _, path = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(*host.split(":"), timeout=10)
    conn.request("GET", "/" + path, headers=headers)
    resp = conn.getresponse()
    assert resp.status == 200
    return resp.read().decode()
