"""Issue 12, item 1: another local user reads no captured prompt.

A `db_password=...` goes through the proxy; then the `nobody` user asks the viewer for the call
list, the capture page and the index, tries the token file and reads `/admin/stats`: the viewer
answers 403 without the token, the token file is not readable to them, and the admin stats
(open to every local user) carry no prompt, no path and no credential.
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


def fetch_as(other_user, url: str) -> tuple[int, str]:
    code = ("import urllib.request, urllib.error\n"
            f"try:\n    r = urllib.request.urlopen({url!r}, timeout=10); print(r.status); print(r.read().decode())\n"
            "except urllib.error.HTTPError as e:\n    print(e.code); print(e.read().decode())\n")
    result = other_user(code)
    status, _, body = result.stdout.partition("\n")
    assert status.isdigit(), result.stderr
    return int(status), body


def test_another_user_gets_no_prompt_from_the_viewer(daemon, upstream, other_user):
    send_secret(daemon)
    viewer = f"http://127.0.0.1:{daemon.state['ports']['viewer']}"
    calls = json.loads(http_get(viewer + "/api/calls", daemon.viewer_cookie()))
    capture_id = calls[0]["capture_id"]
    assert SECRET in http_get(f"{viewer}/capture/{capture_id}", daemon.viewer_cookie())  # the owner sees it

    for path in ("/api/calls", f"/capture/{capture_id}", "/", f"/?token={'x' * 43}"):
        status, body = fetch_as(other_user, viewer + path)
        assert status == 403, path
        assert SECRET not in body and "hunter2" not in body
        assert "Run `opik-cipx viewer`" in body
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
    status, health = fetch_as(other_user, admin + "/admin/health")
    assert (status, json.loads(health)) == (200, {"ok": True})  # health stays open
    status, text = fetch_as(other_user, admin + "/admin/stats")
    assert status == 200
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
