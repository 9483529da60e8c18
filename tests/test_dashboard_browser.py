"""The dashboard in a real browser: Debian's chromium, headless, against a real daemon fed with the
recorded corpus (today) over a ledger that already holds 20 days of copies of it (written relative
to the clock, so no date is fixed). The rendered DOM must hold the totals, the charts, a date
range and filters that agree with `report`, top-list links that narrow the view, exports in
`report`'s shape and a call's request folded by bucket, before and after a restart. Each test
drives one browser with a fresh profile over the DevTools protocol (`tests/browser.py`): turned
away before it signs in, then signed in by a one-time link, whose cookie admits the pages after it.

Screenshots at 1280 px and at phone width (390 px) go to `$CIPX_SCREENSHOTS` when set (a
directory the caller chooses; docs/dashboard.png is the 1280 px home), else under the test's
temporary directory."""

import csv
import dataclasses
import http.client
import io
import json
import os
import random
import re
import struct
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import pytest

from opik_cipx.ledger.entry import ledger_entry
from opik_cipx.ledger.periods import day_start_ns, local_day
from opik_cipx.ledger.store import Ledger
from opik_cipx.views.sign_in import SignInLinks
from tests.browser import EXECUTABLE, Browser
from tests.claude_code_corpus import SCENARIOS, materialized, write_session_files
from tests.conftest import DaemonProcess, run_command, wait_for
from tests.test_end_to_end import replay_scenario

pytestmark = pytest.mark.skipif(
    EXECUTABLE is None, reason="no chromium on this machine (`.ci/run` installs Debian's: apt-get install chromium)")
SUBAGENT_SESSION = "1b15d3cd-b49e-410d-880f-1d1856a84f6c"
SUBAGENT_PROMPT = "Use a subagent to survey this project's layout and report back."
HISTORY_DAYS = 20


def sign_in(browser: Browser, base: str, home: Path) -> str:
    """Open a new one-time sign-in link (what `opik-cipx viewer` issues): the viewer sets the cookie
    and its page moves the browser on to `/` without the code. The DOM of that home page."""
    assert browser.open(f"{base}/?signin={SignInLinks(home).issue()}", until=lambda url: "signin=" not in url) == \
        f"{base}/"
    return browser.html()


def dom(browser: Browser, url: str) -> str:
    browser.open(url)
    return browser.html()


def screenshot(browser: Browser, url: str, path: Path, width: int, height: int) -> tuple[int, int]:
    browser.open(url)
    data = browser.screenshot(width, height)
    path.write_bytes(data)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page was drawn, not a blank
    return struct.unpack(">II", data[16:24])


def text_of(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).replace("&amp;", "&")


def unescape(href: str) -> str:
    return href.replace("&amp;", "&")


def card_figures(page: str, card: str) -> str:
    """`$cost N calls` of one total card."""
    found = re.search(rf'<div class="card" id="{card}">(.*?)</div></div>', page, re.S)
    assert found, card
    return " ".join(re.findall(r"\$[\d,.]+|[\d,]+ calls", text_of(found.group(1))))


def report_figures(home: Path, *args: str) -> str:
    total = json.loads(run_command(home, "report", "--json", *args).stdout)["total"]
    return f"${total['cost_usd']:,.2f} {total['calls']:,} calls"


def history(tmp: Path, now_ns: int) -> list:
    """The corpus' calls copied onto the 20 days before today: a random share of them each day
    (fixed seed), with new capture ids and sessions."""
    entries = [ledger_entry(r.call) for _, _, _, r in materialized(tmp / "history") if r.call]
    rng, out, today = random.Random(25), [], date.fromisoformat(local_day(now_ns))
    for back in range(1, HISTORY_DAYS + 1):
        start = day_start_ns((today - timedelta(days=back)).isoformat()) + 9 * 3600 * 10**9
        for n, entry in enumerate(rng.sample(entries, rng.randrange(10, len(entries)))):
            at = start + n * 30 * 10**9
            session = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{entry.call['session_id']}/{back}"))
            out.append(dataclasses.replace(entry, call={
                **entry.call, "capture_id": f"history-{back}-{n}", "started_at_ns": at, "ended_at_ns": at + 10**9,
                "day": local_day(at), "session_id": session}))
    return out


def viewer_get(daemon: DaemonProcess, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.state["ports"]["viewer"], timeout=10)
    conn.request("GET", path, headers=daemon.viewer_cookie())
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


@pytest.fixture
def browser(tmp_path):
    """One Chromium for the test, with a profile of its own: no cookie from another test."""
    with Browser(tmp_path / "browser-profile") as opened:
        yield opened


@pytest.fixture
def shots(tmp_path) -> Path:
    out = Path(os.environ.get("CIPX_SCREENSHOTS") or tmp_path / "shots")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_the_dashboard_answers_questions_in_chromium(home, upstream, tmp_path, shots, browser):
    write_session_files(home / "sessions")
    ledger = Ledger(home / "ledger.db", retention_days=400)
    assert ledger.write_entries(history(tmp_path, time.time_ns()))
    ledger.close()
    daemon = DaemonProcess(home, upstream.url)
    try:
        replayed = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))  # what follows is newer
        calls = sum(replay_scenario(daemon, upstream, scenario) for scenario in SCENARIOS)
        wait_for(lambda: daemon.counter("events_materialized") == calls, timeout_s=30, what="every call materialized")
        base = f"http://127.0.0.1:{daemon.state['ports']['viewer']}"
        assert "this browser is not signed in" in dom(browser, base + "/")  # not signed in

        home_page = sign_in(browser, base, home)
        today = re.search(r'href="/\?since=([\d-]+)">today</a>', home_page).group(1)  # the page's own today
        first = date.fromisoformat(today)
        for card, back in (("total-today", 0), ("total-last-7-days", 6), ("total-last-30-days", 29)):
            assert card_figures(home_page, card) == report_figures(
                home, "--since", (first - timedelta(days=back)).isoformat()), card
        wide = home_page[home_page.index('class="only-wide"'):home_page.index('class="only-narrow"')]
        assert wide.count('class="bar"') >= 5 * HISTORY_DAYS  # a day a column, stacked by bucket
        narrow = home_page[home_page.index('class="only-narrow"'):home_page.index("Top spenders")]
        rows = re.findall(r">(\d\d-\d\d)</text>(<rect class=\"bar\")?", narrow)
        assert rows[-1] == (today[5:], '<rect class="bar"') and len(rows) == 30  # today last, with its bar
        for key in ("session", "project", "model", "kind", "agent", "mcp", "skill"):
            assert f'id="top-{key}"' in home_page
        assert "weather" in text_of(home_page) and "general-purpose" in text_of(home_page)
        assert ">menu<" not in home_page and "(the list of available skills)" in home_page
        sessions = home_page[home_page.index('id="top-session"'):home_page.index('id="top-project"')]
        names = re.findall(r'<td><a href="[^"]+">(.*?)</a></td>', sessions)
        named = re.compile(  # each by its label (first prompt), project, start and the start of its id
            r"<span title=\"[^\"]+\">[^<]+</span> <span class=\"muted about\">[\w-]+ · \d\d-\d\d \d\d:\d\d · "
            r"<span class=\"mono\" title=\"[0-9a-f-]{36}\">[0-9a-f]{8}</span></span>")
        assert len(names) == 8 and all(named.fullmatch(name) for name in names)

        assert screenshot(browser, base + "/", shots / "dashboard.png", 1280, 2000) == (1280, 2000)
        assert screenshot(browser, base + "/", shots / "dashboard-phone.png", 390, 2400) == (390, 2400)

        # a date range, then a filter on top of it: the cards say what `report` says
        since, until = (first - timedelta(days=10)).isoformat(), (first - timedelta(days=3)).isoformat()
        ranged = dom(browser, f"{base}/?since={since}&until={until}")
        assert card_figures(ranged, "total-range") == report_figures(home, "--since", since, "--until", until)
        assert f"Selected range, {since} to {until}" in text_of(ranged)
        assert len(re.findall(r'class="bar"', ranged[ranged.index('class="only-narrow"'):])) >= 8 * 5
        main_only = dom(browser, f"{base}/?since={since}&until={until}&kind=main")
        assert card_figures(main_only, "total-range") == report_figures(
            home, "--since", since, "--until", until, "--kind", "main")
        assert "kind <b>main</b>" in main_only and '<option selected="">main</option>' in main_only

        # every top-list row is a link to the view it narrows to, keeping the range and filters
        model_link, model = re.search(r'<section id="top-model">.*?<td><a href="([^"]+)">([^<]+)</a>', main_only,
                                      re.S).groups()
        assert all(part in unescape(model_link) for part in (f"since={since}", f"until={until}", "kind=main"))
        by_model = dom(browser, base + unescape(model_link))
        assert card_figures(by_model, "total-range") == report_figures(
            home, "--since", since, "--until", until, "--kind", "main", "--model", model)
        skill_link = re.search(r'<section id="top-skill">.*?<td><a href="([^"]+)">', home_page, re.S).group(1)
        assert unescape(skill_link) == "/calls?skill=menu"  # the skill list: the calls that carried it
        assert dom(browser, base + "/calls?skill=menu").count('href="/capture/') > 10

        # the exports give what is shown, in `report`'s shape
        export = re.search(r'<section id="chart"><h2>.*?href="(/report\.json[^"]+)"', main_only, re.S).group(1)
        shown = json.loads(re.search(r"<pre[^>]*>(.*?)</pre>", dom(browser, base + unescape(export)),
                                     re.S).group(1).replace("&amp;", "&"))
        assert shown == json.loads(run_command(home, "report", "--by", "day,bucket", "--since", since, "--until",
                                               until, "--kind", "main", "--json").stdout)
        status, body = viewer_get(daemon, f"/report.csv?by=model&since={since}&until={until}")
        assert status == 200 and body == run_command(home, "report", "--by", "model", "--since", since, "--until",
                                                     until, "--csv").stdout
        status, body = viewer_get(daemon, f"/calls.csv?since={replayed}")
        rows = list(csv.DictReader(io.StringIO(body)))
        assert status == 200 and len(rows) == calls and {"input_side_tokens", "cache_read_tokens"} <= set(rows[0])

        # a session by the start of its id; a call's request folded by bucket
        session = dom(browser, f"{base}/session/{SUBAGENT_SESSION[:8]}")
        assert "<polyline" in session and "cumulative cost" in session
        assert f'<h1 id="session-label">{SUBAGENT_PROMPT}</h1>' in session
        assert 'class="group"' in session and session.count('class="sub"') == 3
        session_cost = json.loads(run_command(home, "report", "--session", SUBAGENT_SESSION[:8], "--json").stdout)
        assert f"${session_cost['total']['cost_usd']:,.4f}" in text_of(session)
        capture_id = re.search(r"/capture/([0-9a-f-]+)\">subagent", session).group(1)
        words = text_of(dom(browser, f"{base}/capture/{capture_id}"))
        assert f"session {SUBAGENT_PROMPT[:59]}\u2026 inventory-sync" in words  # the call page names its session
        assert "Tokens and cost" in words and "cache write 5m" in words and "would have cost" in words
        largest = max((c for c in json.loads(viewer_get(daemon, f"/calls.json?since={replayed}")[1])),
                      key=lambda c: c["request_chars"])
        call = dom(browser, f"{base}/capture/{largest['capture_id']}")
        folds = re.findall(r'<details class="part" id="(part-\d+)"[^>]*?( open="")?>', call)
        assert len(folds) >= 10 and sum(1 for _, opened in folds if not opened) >= 3  # the long parts folded
        assert {f"#{part}" for part, _ in folds} == set(re.findall(r'href="(#part-\d+)"', call))  # the jump list
        assert "tools_builtin" in text_of(call[call.index('id="jump"'):])
        unfolded = dom(browser, f"{base}/capture/{largest['capture_id']}?unfold=1")
        assert unfolded.count(' open="">') == len(folds)
        screenshot(browser, f"{base}/capture/{largest['capture_id']}", shots / "call.png", 1280, 2400)
        screenshot(browser, f"{base}/session/{SUBAGENT_SESSION}", shots / "session-phone.png", 390, 1600)
    finally:
        assert daemon.stop() == 0
    daemon = DaemonProcess(home, upstream.url)
    try:  # a restart empties nothing
        base = f"http://127.0.0.1:{daemon.state['ports']['viewer']}"
        sign_in(browser, base, home)  # a cookie is per port, and a saved port may be taken meanwhile
        month = f"/?since={(first - timedelta(days=29)).isoformat()}&until={today}"  # fixed dates: midnight may pass
        again = dom(browser, base + month)
        assert card_figures(again, "total-range") == card_figures(home_page, "total-last-30-days")
        assert f"/capture/{capture_id}" in dom(browser, f"{base}/calls?kind=subagent")
    finally:
        assert daemon.stop() == 0


def test_the_savings_section_shows_what_advise_finds(home, upstream, tmp_path, browser):
    """The derived `unused_server` session (a third MCP server listed and never called) moved to an
    hour ago: the home page's Savings section names the server with `advise`'s saving over the same
    30 days, and a filter `advise` does not take says so instead."""
    from tests.ledger.test_advice import ADVICE, derived

    calls = derived(tmp_path, ADVICE, "unused_server", ("001", "002", "003"))
    shift = time.time_ns() - 3600 * 10**9 - calls[0][0].exchange.started_at_ns
    entries = []
    for call, _ in calls:
        entry = ledger_entry(call)
        at = entry.call["started_at_ns"] + shift
        entries.append(dataclasses.replace(entry, call={**entry.call, "started_at_ns": at, "ended_at_ns": at + 10**9,
                                                        "day": local_day(at)}))
    ledger = Ledger(home / "ledger.db", retention_days=400)
    assert ledger.write_entries(entries)
    ledger.close()
    daemon = DaemonProcess(home, upstream.url)
    try:
        base = f"http://127.0.0.1:{daemon.state['ports']['viewer']}"
        page = sign_in(browser, base, home)
        today = date.fromisoformat(re.search(r'href="/\?since=([\d-]+)">today</a>', page).group(1))
        section = text_of(page[page.index('id="savings">') + len('id="savings">'):]).strip()
        assert section.startswith("Savings, last 30 days")
        advice = json.loads(run_command(home, "advise", "--json", "--since",
                                        (today - timedelta(days=29)).isoformat()).stdout)["findings"]
        calendar = next(f for f in advice if f["subject"] == "calendar")
        row = re.search(r"(\$[\d.]+) unused_mcp_server calendar 3 remove the MCP server calendar", section)
        assert row and row.group(1) == f"${calendar['saving_usd']:.4f}"
        assert f"of {len(advice)} findings" in section
        narrowed = text_of(dom(browser, base + "/?model=claude-opus-4-8"))
        assert "Savings cover whole projects: without the model filter they show here." in narrowed
    finally:
        daemon.stop()
