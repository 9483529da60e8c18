"""`opik-cipx viewer --open`: the browser is started on a private local page that forwards it to the
one-time sign-in URL, so neither the link nor the token is on a command line (`/proc/*/cmdline` is
readable by every local user).

The browser is a fake one (`$BROWSER`, which Python's `webbrowser` honours): it records its argv and
every process's command line while it runs, and the page it was given. Following that page signs a
client in with a cookie that is not the token; with chromium on the machine, a real browser does it.
"""

import html
import http.client
import json
import re
import stat
import sys
import urllib.parse
from pathlib import Path

import pytest

from tests.browser import EXECUTABLE, Browser
from tests.conftest import run_cli

FAKE_BROWSER = """#!{python}
import json, os, pathlib, sys, urllib.parse
home = pathlib.Path(os.environ["CIPX_HOME"])
token = (home / "viewer.token").read_text().strip()
opened = urllib.parse.urlsplit(sys.argv[-1])
page = pathlib.Path(urllib.parse.unquote(opened.path)).read_text() if opened.scheme == "file" else None
secrets = [token] + ([page.split("signin=", 1)[1][:32]] if page and "signin=" in page else [])
holders = []
for proc in pathlib.Path("/proc").iterdir():
    try:
        if any(secret.encode() in (proc / "cmdline").read_bytes() for secret in secrets):
            holders.append(proc.name)
    except OSError:
        pass
pathlib.Path(os.environ["FAKE_BROWSER_LOG"]).write_text(
    json.dumps({{"argv": sys.argv, "cmdline_holders": holders, "page": page, "secrets": len(secrets)}}))
"""


def fake_browser(tmp_path: Path) -> tuple[Path, Path]:
    script = tmp_path / "fake-browser"
    script.write_text(FAKE_BROWSER.format(python=sys.executable))
    script.chmod(0o755)
    return script, tmp_path / "browser.json"


def get(port: int, path: str, cookie: str | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
    resp = conn.getresponse()
    resp.read()
    return resp


def test_open_puts_no_link_on_a_command_line_and_its_page_signs_in_once(daemon, tmp_path):
    script, log = fake_browser(tmp_path)
    result = run_cli(daemon.home, "viewer", "--open", BROWSER=str(script), FAKE_BROWSER_LOG=str(log))
    assert result.returncode == 0, result.stderr
    token = (daemon.home / "viewer.token").read_text().strip()
    port = daemon.state["ports"]["viewer"]
    sign_in = result.stdout.strip()  # the link it printed is the one it opened
    assert sign_in.startswith(f"http://127.0.0.1:{port}/?signin=")
    code = sign_in.rpartition("=")[2]

    seen = json.loads(log.read_text())
    assert seen["argv"][1:] and not any(token in arg or code in arg for arg in seen["argv"])
    assert seen["secrets"] == 2 and seen["cmdline_holders"] == []  # no process carried the link or the token
    page_path = daemon.home / "viewer-open.html"
    assert seen["argv"][-1] == page_path.as_uri()
    assert stat.S_IMODE(page_path.stat().st_mode) == 0o600
    forward = re.search(r'http-equiv=refresh content="0; url=([^"]+)"', seen["page"]).group(1)
    assert html.unescape(forward) == sign_in

    signed = get(port, urllib.parse.urlsplit(sign_in)._replace(scheme="", netloc="").geturl())
    assert signed.status == 200
    assert get(port, urllib.parse.urlsplit(sign_in)._replace(scheme="", netloc="").geturl()).status == 403  # once
    cookie = signed.getheader("Set-Cookie").partition(";")[0]
    assert token not in cookie
    assert get(port, "/api/calls", cookie).status == 200  # the cookie a real sign-in sets works
    assert get(port, "/api/calls", f"{cookie.partition('=')[0]}={token}").status == 403  # the token does not


def test_a_real_browser_follows_the_page_to_the_dashboard(daemon, tmp_path):
    if EXECUTABLE is None:
        pytest.skip("no chromium on this machine (`.ci/run` installs Debian's)")
    script, log = fake_browser(tmp_path)
    assert run_cli(daemon.home, "viewer", "--open", BROWSER=str(script), FAKE_BROWSER_LOG=str(log)).returncode == 0
    opened = json.loads(log.read_text())["argv"][-1]
    base = f"http://127.0.0.1:{daemon.state['ports']['viewer']}"
    with Browser(tmp_path / "profile") as browser:  # the page's refresh, the sign-in, then the dashboard
        assert browser.open(opened, until=lambda url: url.startswith(base) and "signin=" not in url) == f"{base}/"
        page = browser.html()
    assert "not signed in" not in page
    assert "<h1>Claude Code cost</h1>" in page  # the dashboard itself, signed in
