"""The viewer's dashboard over HTTP: home, calls, a session, a call, from a ledger and a capture
store of the recorded corpus (at its recorded dates, the dashboard's clock a day later: no test
depends on today's date); the Host and token guards and the Content-Security-Policy."""

import csv
import html
import http.client
import io
import json
import re
import threading
import urllib.parse
from datetime import date, timedelta

import pytest

from opik_cipx.ledger.db import open_reader
from opik_cipx.ledger.periods import day_start_ns
from opik_cipx.ledger.queries import Selection, report
from opik_cipx.ledger.store import Ledger
from opik_cipx.store.captures import CaptureStore
from opik_cipx.views.access import ViewerAccess, cookie_name, cookie_value
from opik_cipx.views.charts import PALETTE
from opik_cipx.views.dashboard import Dashboard
from opik_cipx.views.sign_in import SignInLinks
from opik_cipx.views.viewer import ViewerHandler
from opik_cipx.wire.loopback import LoopbackServer
from tests.claude_code_corpus import corpus_clock, materialized
from tests.conftest import LIMITS

SUBAGENT_SESSION = "1b15d3cd-b49e-410d-880f-1d1856a84f6c"
TOKEN = "t" * 43


def serve(home):
    pages = Dashboard(home / "ledger.db", home / "captures", clock=corpus_clock())
    access = ViewerAccess(TOKEN, SignInLinks(home, corpus_clock()))
    handler = type("H", (ViewerHandler,), {"pages": pages, "access": access})
    server = LoopbackServer("viewer", "127.0.0.1", 0, handler, LIMITS)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    home = tmp_path_factory.mktemp("viewer") / "cipx-home"
    corpus = materialized(home / "sessions")
    store = CaptureStore(home / "captures", segment_bytes=10**7)
    ledger = Ledger(home / "ledger.db", retention_days=400, clock=corpus_clock())
    for _, _, capture, result in corpus:
        store.append(capture)
        ledger.write(result.call)
    store.close()
    ledger.close()
    server = serve(home)
    yield server.port, home, corpus
    server.shutdown()
    server.server_close()


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str, dict]:
    """GET as a browser that signed in with the token."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host, "Cookie": f"{cookie_name(port)}={cookie_value(TOKEN, port)}"})
    resp = conn.getresponse()
    return resp.status, resp.read().decode(), dict(resp.getheaders())


def text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def assert_self_contained(page: str, headers: dict) -> None:
    assert headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page
    assert not re.search(r"""(?:src|href)=['"]?(?:https?:)?//""", page)  # nothing loaded from anywhere
    assert "name=viewport" in page


def test_home_shows_totals_a_30_day_chart_and_top_spenders(viewer):
    port, home, corpus = viewer
    status, page, headers = get(port, "/")
    assert status == 200
    assert_self_contained(page, headers)
    total = report(open_reader(home / "ledger.db"), ()).total
    card = page[page.index("id='total-last-30-days'"):]
    assert f"${total['cost_usd']:,.2f}" in card[:400] and f"{total['calls']:,} calls" in card[:600]
    chart = page[page.index("Cost per day"):page.index("Top spenders")]
    assert chart.count("<rect class=bar") >= 10  # one day, stacked by bucket
    assert f"fill='{PALETTE['tools_builtin']}'" in chart and "tools_builtin" in text(chart)
    for key in ("session", "project", "model", "mcp", "skill", "agent"):
        assert f"id='top-{key}'" in page
    assert "weather" in text(page[page.index("id='top-mcp'"):]) and "general-purpose" in text(page)
    assert f"/?session={SUBAGENT_SESSION}" in page  # its row: the dashboard narrowed to it
    assert page.count("href='/capture/") >= 20
    narrow = page[page.index("class=only-narrow"):page.index("Top spenders")]  # the chart on a phone
    assert "<figure class='chart rows'>" in narrow
    assert re.search(r">11-24</text><rect class=bar", narrow) and ">$1.91</text>" in narrow


def top_rows(page: str) -> dict[str, list[tuple[str, str]]]:
    """Top list -> its rows' (link, text)."""
    out = {}
    for key, section in re.findall(r"<section id='top-(\w+)'>(.*?)</section>", page, re.S):
        out[key] = [(html.unescape(href), text(name).strip()) for href, name in
                    re.findall(r"<tr><td><a href='([^']+)'>(.*?)</a></td>", section)]
    return out


def test_every_top_list_row_is_a_link_to_the_view_it_filters(viewer):
    port, home, _ = viewer
    conn = open_reader(home / "ledger.db")
    _, page, _ = get(port, "/")
    rows = top_rows(page)
    assert set(rows) == {"session", "project", "model", "kind", "agent", "mcp", "skill"}
    for key in rows:  # every row a link
        section = page[page.index(f"<section id='top-{key}'>"):]
        assert len(rows[key]) == section[:section.index("</section>")].count("<tr><td>") > 0, key
    assert [name for _, name in rows["skill"]] == ["(the list of available skills)", "release-notes"]  # no skill `menu`
    for key in ("model", "kind", "agent", "project", "session"):
        href, _ = rows[key][-1]
        value = urllib.parse.parse_qs(urllib.parse.urlsplit(href).query)[key][0]
        status, narrowed, _ = get(port, href)
        want = report(conn, (), Selection(**{key: value})).total
        card = narrowed[narrowed.index("id='total-last-30-days'"):]
        assert status == 200 and f"{want['calls']:,} calls" in card[:600], href
        assert f"<b>{html.escape(value)}</b>" in narrowed  # the filter shown, with a link that drops it
        kept = [urllib.parse.parse_qs(urllib.parse.urlsplit(h).query) for h, _ in top_rows(narrowed)["model"]]
        assert kept and all(q[key] == [value] for q in kept)  # the model links keep this filter
    href, name = rows["mcp"][0]
    assert (href, name) == ("/calls?mcp=weather", "weather")
    status, calls, _ = get(port, href)
    assert status == 200 and calls.count("href='/capture/") == 3 and "MCP server <b>weather</b>" in calls


def test_a_date_range_and_filters_narrow_every_figure_and_links_keep_them(viewer):
    port, home, _ = viewer
    conn = open_reader(home / "ledger.db")
    query = "since=2026-11-24&until=2026-11-24&model=claude-opus-4-8&kind=main"  # in the order links write it
    status, page, _ = get(port, f"/?{query}")
    sel = Selection(since_ns=day_start_ns("2026-11-24"), until_ns=day_start_ns("2026-11-25"), kind="main",
                    model="claude-opus-4-8")
    want = report(conn, (), sel).total
    card = page[page.index("id='total-range'"):]
    assert status == 200 and "Selected range, 2026-11-24 to 2026-11-24" in card[:300]
    assert f"${want['cost_usd']:,.2f}" in card[:400] and f"{want['calls']:,} calls" in card[:600]
    assert want["calls"] == 35
    assert "value='2026-11-24'" in page and "<option selected>main</option>" in page  # the form shows them
    links = [html.unescape(h) for h in re.findall(r"href='([^'#]+)'", page)]
    internal = [h for h in links if h.startswith(("/capture/", "/session/", "/calls"))]
    assert internal and all("kind=main" in h and "model=claude-opus-4-8" in h for h in internal), internal[:3]
    nav = re.findall(r"<header>.*?</header>", page)[0]
    assert f"href='/?{query.replace('&', '&amp;')}'" in nav
    status, empty, _ = get(port, "/?project=/home/dev/nowhere")
    assert status == 200
    assert "Nothing to show: no call in the ledger was made in /home/dev/nowhere or below it." in text(empty)
    status, later, _ = get(port, "/?since=2026-12-01")
    assert "Nothing to show: no call was made from 2026-12-01 00:00 to now" in text(later)
    assert "cannot read since 'last tuesday'" in text(get(port, "/?since=last+tuesday")[1])


def test_exports_give_what_is_shown_in_reports_shape(viewer, tmp_path):
    from opik_cipx.ledger.export import CALL_EXPORT, report_json
    from tests.conftest import run_command

    port, home, _ = viewer
    conn = open_reader(home / "ledger.db")
    _, page, _ = get(port, "/?kind=main")
    chart_json = html.unescape(re.search(r"<section id=chart><h2>.*?href='(/report\.json[^']+)'", page).group(1))
    since = (date(2026, 11, 25) - timedelta(days=29)).isoformat()
    assert chart_json == f"/report.json?since={since}&kind=main&by=day,bucket"
    status, body, headers = get(port, chart_json)
    assert status == 200 and headers["Content-Type"] == "application/json"
    sel = Selection(since_ns=day_start_ns("2026-10-27"), kind="main")
    assert json.loads(body) == json.loads(json.dumps(report_json(report(conn, ("day", "bucket"), sel))))
    status, body, headers = get(port, "/report.csv?by=model&session=d746060a")  # a session's start works here too
    rows = list(csv.reader(io.StringIO(body)))
    assert status == 200 and headers["Content-Type"].startswith("text/csv") and rows[-1][1] == "3"
    cli = run_command(home, "report", "--by", "model", "--session", "d746060a", "--csv")
    assert body == cli.stdout  # the same shape as `report --csv`
    status, body, _ = get(port, "/calls.csv?mcp=weather")
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0] == list(CALL_EXPORT) and len(rows) == 4
    calls = json.loads(get(port, "/calls.json?kind=count_tokens&limit=5")[1])
    assert len(calls) == 5 and {c["kind"] for c in calls} == {"count_tokens"} and list(calls[0]) == list(CALL_EXPORT)
    assert get(port, "/report.json?by=colour")[0] == 400
    assert get(port, "/report.json?by=model&session=1b")[0] == 400  # two sessions start so


def test_a_session_is_found_by_the_start_of_its_id(viewer):
    port, _, _ = viewer
    status, page, _ = get(port, f"/session/{SUBAGENT_SESSION[:8]}")
    assert status == 200 and f"<p class=mono>session {SUBAGENT_SESSION}</p>" in page
    status, page, _ = get(port, "/session/1b?model=claude-opus-4-8")
    assert status == 300 and "starts 2 session ids" in text(page)
    assert "Use a subagent to survey this project" in text(page)  # each candidate with its label
    assert "Run echo hi and tell me what it printed." in text(page)
    candidates = re.findall(r"<li><a href='([^']+)'>", page)
    assert [html.unescape(c) for c in candidates] == [f"/session/{SUBAGENT_SESSION}?model=claude-opus-4-8",
                                                      "/session/1ba5440a-458d-4df7-b61b-c2cf3c262711?model=claude-opus-4-8"]
    status, page, _ = get(port, "/?session=1b")
    assert status == 300 and f"href='/?session={SUBAGENT_SESSION}'" in page
    status, page, _ = get(port, "/?session=44faf0ae")
    assert status == 404 and "no session in the ledger has an id starting with '44faf0ae'" in text(page)
    status, page, _ = get(port, f"/?session={SUBAGENT_SESSION[:8]}")
    assert status == 200 and f"href='/session/{SUBAGENT_SESSION}'" in page  # its page, from the narrowed view


def test_session_page_nests_subagent_calls_under_their_launch(viewer):
    port, home, _ = viewer
    status, page, headers = get(port, f"/session/{SUBAGENT_SESSION}")
    assert status == 200
    assert_self_contained(page, headers)
    assert "<polyline" in page and "cumulative cost" in page
    assert "/home/dev/code/inventory-sync" in page and "feat/subagent" in page and "dev@acme.test (Acme)" in page
    rows = re.findall(r"<tr class='([^']*)'><td>[^<]*</td><td><a href='/capture/[^']+'>([^<]+)</a>", page)
    assert [(cls, kind.split()[0]) for cls, kind in rows] == [
        ("", "main"), ("sub", "subagent"), ("sub", "subagent"), ("sub", "subagent"), ("", "main")]
    assert "general-purpose subagent" in text(page)
    assert "Where the session's cost went" in page and "tools_builtin" in page


def test_call_page_has_tokens_and_dollars_per_bucket_and_the_cache_split(viewer):
    port, _, corpus = viewer
    capture_id = next(c.id for s, n, c, _ in corpus if (s, n) == ("subagent", "002"))
    status, page, headers = get(port, f"/capture/{capture_id}")
    assert status == 200
    assert_self_contained(page, headers)
    words = text(page)
    for label in ("uncached input", "cache write 5m", "cache write 1h", "cache read", "output"):
        assert label in words
    assert "12,449 tokens written" in words and "would have cost" in words and "dev@acme.test (Acme)" in words
    buckets = page[page.index("class=buckets"):]
    assert "tools_builtin" in buckets and "$" in buckets and "chars" in buckets
    assert "The request, by bucket" in page and "id=jump" in page
    assert page.count("<span style='background:") >= 50
    assert "title='unattributed" not in page


def test_a_call_whose_capture_is_gone_still_shows_its_numbers(viewer, tmp_path):
    port, home, corpus = viewer
    capture_id = next(c.id for s, n, c, _ in corpus if (s, n) == ("mcp", "001"))
    server = serve(home)  # same ledger, pointed at an empty capture store below
    server.RequestHandlerClass.pages.captures_dir = tmp_path / "no-captures"
    try:
        status, page, _ = get(server.port, f"/capture/{capture_id}")
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200 and "Tokens and cost" in page and "no longer stored" in page


def test_exchanges_outside_the_ledger_and_unknown_ids(viewer):
    port, _, corpus = viewer
    preconnect = next(c.id for s, n, c, _ in corpus if (s, n) == ("simple", "000"))
    status, page, _ = get(port, f"/capture/{preconnect}")
    assert status == 200 and "Not in the ledger" in page and "The request, by bucket" in page
    assert get(port, "/capture/01960000-0000-7000-8000-000000000000")[0] == 404
    assert get(port, "/capture/not-an-id")[0] == 404
    assert get(port, "/session/nobody")[0] == 404
    assert get(port, "/nowhere")[0] == 404


def test_all_calls_page_by_page_and_the_json_list(viewer):
    port, _, _ = viewer
    status, body, _ = get(port, "/api/calls")
    rows = json.loads(body)
    assert status == 200 and len(rows) == 71
    assert rows[0]["started_at_ns"] >= rows[-1]["started_at_ns"]  # newest first
    _, page, _ = get(port, "/calls")
    assert page.count("href='/capture/") == 71 and "Older calls" not in page
    _, older, _ = get(port, f"/calls?before={rows[9]['started_at_ns']}")
    assert 0 < older.count("href='/capture/") <= 62


def test_host_guard(viewer):
    port, _, _ = viewer
    assert get(port, "/", host="attacker.example")[0] == 403
    assert get(port, "/", host="localhost:1234")[0] == 200


def test_without_a_ledger_and_with_a_damaged_one(tmp_path):
    home = tmp_path / "cipx-home"
    home.mkdir()
    server = serve(home)
    try:
        status, page, _ = get(server.port, "/")
        assert status == 200 and "No calls recorded yet" in page
        (home / "ledger.db").write_bytes(b"not sqlite" * 500)
        status, page, _ = get(server.port, "/")
        assert status == 503 and "replay --ledger" in page
    finally:
        server.shutdown()
        server.server_close()


def test_calls_of_an_unknown_model_are_flagged_never_priced_at_zero(tmp_path, viewer):
    import dataclasses

    from opik_cipx.commands.status import today_line
    from opik_cipx.config import load_settings
    from opik_cipx.ledger.entry import ledger_entry
    from opik_cipx.ledger.figures import unpriced_note
    from tests.conftest import run_command

    _, _, corpus = viewer
    _, _, capture, result = next(c for c in corpus if c[:2] == ("mcp", "002"))
    entry = ledger_entry(result.call)
    mystery = dataclasses.replace(entry, call={**entry.call, "model": "claude-nova-9", "unknown_model": 1,
                                               "cost_usd": None, "warm_cache_cost_usd": None},
                                  details=tuple(dataclasses.replace(d, cost_usd=None) for d in entry.details))
    home = tmp_path / "cipx-home"
    ledger = Ledger(home / "ledger.db", retention_days=400, clock=corpus_clock())
    ledger.write_entries([entry, dataclasses.replace(mystery, call={**mystery.call, "capture_id": "x"})])
    ledger.close()
    server = serve(home)
    try:
        _, page, _ = get(server.port, "/")
        assert unpriced_note(1) in text(page)
        assert "unknown model" in text(page)
        _, call, _ = get(server.port, "/capture/x")
        assert "unknown model" in text(call) and "claude-nova-9" in call
    finally:
        server.shutdown()
        server.server_close()
    table = run_command(home, "report", "--by", "model").stdout
    assert f"{unpriced_note(1)}." in table  # the dashboard's words
    total = next(line for line in table.splitlines() if line.startswith("total"))
    assert f"${entry.call['cost_usd']:,.4f}" in total  # the priced call only
    settings = load_settings({"CIPX_HOME": str(home), "HOME": str(tmp_path)})
    assert today_line(settings, now_ns=entry.call["started_at_ns"]) == (
        f"2 call(s), ${entry.call['cost_usd']:,.4f}; {unpriced_note(1)} (`opik-cipx report` for more)")


def test_a_browser_signs_in_once_then_uses_the_cookie(viewer):
    port, home, _ = viewer
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", f"/session/{SUBAGENT_SESSION}")
    refused = conn.getresponse()
    assert refused.status == 403 and b"opik-cipx viewer" in refused.read()
    conn.request("GET", f"/session/{SUBAGENT_SESSION}?signin={SignInLinks(home, corpus_clock()).issue()}")
    signed_in = conn.getresponse()
    assert signed_in.status == 200 and f"url=/session/{SUBAGENT_SESSION}".encode() in signed_in.read()
    cookie = signed_in.getheader("Set-Cookie").split(";", 1)[0]
    conn.request("GET", f"/session/{SUBAGENT_SESSION}", headers={"Cookie": cookie})
    page = conn.getresponse()
    assert page.status == 200 and b"cumulative cost" in page.read()


def test_call_and_session_pages_explain_cache_breaks(viewer):
    port, home, corpus = viewer
    ids = {(s, n): c.id for s, n, c, _ in corpus}
    status, page, _ = get(port, f"/capture/{ids[('compact', '012')]}")  # the first call after /compact
    words = text(page)
    assert status == 200 and "Prompt cache" in words
    assert "Cache break: compaction, message 0 block 1 changed (compaction: continued_summary)." in words
    assert f"href='/capture/{ids[('compact', '010')]}'" in page  # the call it is compared with
    assert re.search(r"[\d,]+ tokens written again \(or sent uncached\) that the cache held: \$0\.\d+ more", words)
    page = text(get(port, f"/capture/{ids[('tools', '004')]}")[1])
    assert "No cache break: it read what the previous call cached." in page
    assert "nothing to compare it with" in text(get(port, f"/capture/{ids[('tools', '001')]}")[1])
    session = next(r["body"]["metadata"]["cc"]["session"]["id"] for s, n, _, rs in corpus
                   if (s, n) == ("compact", "012") for r in rs.records if r["body"].get("type") == "llm")
    status, page, _ = get(port, f"/session/{session}")
    breaks = text(page[page.index("id=breaks"):page.index("Where the session's cost went")])
    assert "2 call(s) paid to write what the cache should have held" in breaks  # 002 (corpus caveat) and 012
    assert "compaction" in breaks and "unknown" in breaks
    assert page.count("title='cache break: ") == 2  # flagged in the calls table
    status, page, _ = get(port, f"/session/{SUBAGENT_SESSION}")
    assert "Cache breaks" in page
