"""A dashboard URL's range and filters: parsed, written back into links, turned into a ledger
selection (pure; no ledger, no clock but the one given)."""

import html

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.ledger.periods import day_start_ns
from opik_cipx.ledger.queries import Selection
from opik_cipx.views.filters import Filters, parse_filters, selection

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
values = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=20).map(str.strip)
filters = st.builds(Filters, since=values, until=values, project=values, model=values, kind=values, agent=values,
                    session=values, part=st.one_of(st.none(), st.tuples(st.sampled_from(["mcp", "skill", "tool"]),
                                                                        values.filter(bool))))


@given(filters)
def test_a_link_carries_every_filter_back(f):
    assert parse_filters(f.query()[1:]) == f
    href = f.link("/calls")
    assert "'" not in href and '"' not in href and "<" not in href  # safe inside an attribute
    assert parse_filters(html.unescape(href).partition("?")[2]) == f


def test_parsing_keeps_the_first_of_each_known_name_and_one_part():
    f = parse_filters("model=a&model=b&colour=red&since=+7d+&mcp=weather&skill=pdf&project=&before=12")
    assert f == Filters(since="7d", model="a", part=("mcp", "weather"))
    assert f.items() == [("since", "7d"), ("model", "a"), ("mcp", "weather")]
    assert parse_filters("kind=" + "x" * 5000).kind == "x" * 1000


def test_changes_drop_or_replace_filters_in_links():
    f = Filters(since="2026-11-01", model="claude-opus-4-8", part=("mcp", "weather"))
    assert f.query(model="") == "?since=2026-11-01&mcp=weather"
    assert (f.query(part=None, kind="side:web_search")
            == "?since=2026-11-01&model=claude-opus-4-8&kind=side%3Aweb_search")
    assert f.link("/session/a b", since="", model="", part=None) == "/session/a%20b"
    assert Filters().query() == "" and not Filters().with_range() and f.with_range()


def test_the_selection_reads_the_range_as_report_does_and_names_what_it_cannot_read():
    sel, errors = selection(Filters(since="2026-11-01", until="2026-11-24", project="/p", model="m", kind="main",
                                    agent="main"), NOW, session_id="s1")
    assert errors == []
    assert sel == Selection(since_ns=day_start_ns("2026-11-01"), until_ns=day_start_ns("2026-11-25"), session="s1",
                            project="/p", model="m", kind="main", agent="main")
    sel, errors = selection(Filters(since="7d", until="yesterday-ish"), NOW)
    assert sel.since_ns == int((NOW - 7 * 86400) * 1e9) and sel.until_ns is None
    assert errors == ["cannot read until 'yesterday-ish': use e.g. 2h, 30m, 7d or 2026-11-24T09:00"]
    assert selection(Filters(session="44faf0ae"), NOW)[0] == Selection()  # the dashboard resolves a session's start
