"""The dashboard in a real browser: Debian's chromium, headless, loads the home page, a session
page and a call page from a real daemon fed with the recorded corpus, before and after a
restart; the rendered DOM must hold the totals and the charts, at desktop and phone width."""

import json
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tests.claude_code_corpus import SCENARIOS, write_session_files
from tests.conftest import DaemonProcess, run_cli, wait_for
from tests.test_end_to_end import replay_scenario

BROWSER = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(name)), None)
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no chromium on this machine (`.ci/run` installs Debian's: apt-get install chromium)")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")
SUBAGENT_SESSION = "1b15d3cd-b49e-410d-880f-1d1856a84f6c"


def chromium(tmp: Path, *args: str) -> str:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a fresh profile every run
    result = subprocess.run([BROWSER, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def signed_in(url: str, home: Path) -> str:
    """`url` as `opik-cipx viewer` hands it out: with the viewer token, which sets the cookie and
    moves on to `url` itself (a navigation the browser follows within the virtual time budget)."""
    token = (home / "viewer.token").read_text().strip()
    return f"{url}{'&' if '?' in url else '?'}token={token}"


def dom(tmp: Path, url: str, home: Path) -> str:
    return chromium(tmp, "--virtual-time-budget=10000", "--dump-dom", signed_in(url, home))


def screenshot(tmp: Path, url: str, home: Path, path: Path, width: int, height: int) -> tuple[int, int]:
    chromium(tmp, "--virtual-time-budget=10000", f"--screenshot={path}", f"--window-size={width},{height}",
             signed_in(url, home))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page was drawn, not a blank
    return struct.unpack(">II", data[16:24])


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&amp;", "&")


def dashboard_totals(page: str) -> list[str]:
    """The cost and call count of the three total cards."""
    cards = re.findall(r'<div class="card" id="total-[^"]+">(.*?)</div></div>', page, re.S)
    return [" ".join(re.findall(r"\$[\d,.]+|[\d,]+ calls", text_of(card))) for card in cards]


def test_dashboard_session_and_call_pages_render_in_chromium(home, upstream, tmp_path):
    write_session_files(home / "sessions")
    daemon = DaemonProcess(home, upstream.url)
    try:
        calls = sum(replay_scenario(daemon, upstream, scenario) for scenario in SCENARIOS)
        wait_for(lambda: daemon.counter("events_materialized") == calls, timeout_s=30, what="every call materialized")
        base = f"http://127.0.0.1:{daemon.state['ports']['viewer']}"
        total = json.loads(run_cli(home, "report", "--json").stdout)["total"]

        assert "needs the viewer token" in chromium(tmp_path, "--dump-dom", base + "/")  # not signed in
        home_page = dom(tmp_path, base + "/", home)
        # every call was made today (7 and 30 days: also when the test runs across midnight)
        assert dashboard_totals(home_page)[1:] == [f"${total['cost_usd']:,.2f} {calls} calls"] * 2
        chart = home_page[home_page.index("Cost per day"):home_page.index("Top spenders")]
        assert "<svg" in chart and chart.count('class="bar"') >= 10
        for key in ("session", "project", "model", "mcp", "skill", "agent"):
            assert f'id="top-{key}"' in home_page
        assert "weather" in text_of(home_page) and "general-purpose" in text_of(home_page)

        session = dom(tmp_path, f"{base}/session/{SUBAGENT_SESSION}", home)
        assert "<polyline" in session and "cumulative cost" in session
        assert 'class="group"' in session and session.count('class="sub"') == 3
        session_cost = json.loads(run_cli(home, "report", "--session", SUBAGENT_SESSION, "--json").stdout)
        assert f"${session_cost['total']['cost_usd']:,.4f}" in text_of(session)

        capture_id = re.search(r"/capture/([0-9a-f-]+)\">subagent", session).group(1)
        call = dom(tmp_path, f"{base}/capture/{capture_id}", home)
        words = text_of(call)
        assert "Tokens and cost" in words and "cache write, 5 min" in words and "would have cost" in words
        assert 'class="buckets"' in call and 'class="share"' in call and "painted by bucket" in words

        docs = tmp_path / "shots"
        docs.mkdir()
        assert screenshot(tmp_path, base + "/", home, docs / "dashboard.png", 1280, 2000) == (1280, 2000)
        assert screenshot(tmp_path, base + "/", home, docs / "phone.png", 390, 1600) == (390, 1600)
        session_shot = screenshot(tmp_path, f"{base}/session/{SUBAGENT_SESSION}", home, docs / "session.png", 390, 1600)
        assert session_shot[0] == 390
    finally:
        assert daemon.stop() == 0
    daemon = DaemonProcess(home, upstream.url)
    try:  # a restart empties nothing
        base = f"http://127.0.0.1:{daemon.state['ports']['viewer']}"
        assert dashboard_totals(dom(tmp_path, base + "/", home)) == dashboard_totals(home_page)
        assert f"/capture/{capture_id}" in dom(tmp_path, base + "/calls", home)
    finally:
        assert daemon.stop() == 0
