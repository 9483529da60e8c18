"""The home page's Savings section (docs/ADVICE.md, "On the dashboard"): `advise`'s findings over
the chart's 30 days, reused for the same view for `SAVINGS_REUSE_S`, then computed again."""

import re

from opik_cipx.ledger.entry import ledger_entry
from opik_cipx.ledger.store import Ledger
from opik_cipx.views.dashboard import SAVINGS_REUSE_S, Dashboard
from tests.claude_code_corpus import corpus_clock
from tests.ledger.test_advice import ADVICE, derived, moved


def calendar_row(page: bytes) -> str:
    text = page.decode()
    section = text[text.index("<section id=savings>"):]
    return re.search(r"<tr><td class=num>([^<]+)</td><td>unused_mcp_server</td><td>calendar</td>"
                     r"<td class=num>(\d+)</td>", section).group(0)


def test_the_section_is_reused_for_a_while_then_priced_again(tmp_path):
    calls = [call for call, _ in derived(tmp_path, ADVICE, "unused_server", ("001", "002", "003"))]
    ledger = Ledger(tmp_path / "ledger.db", retention_days=400, clock=corpus_clock())
    assert ledger.write_entries([ledger_entry(call) for call in calls])
    clock = corpus_clock()
    pages = Dashboard(tmp_path / "ledger.db", tmp_path / "captures", clock=clock)
    first = calendar_row(pages.route("/")[2])
    assert "<td class=num>3</td>" in first
    assert ledger.write_entries([moved(ledger_entry(call), 3600 * 10**9) for call in calls])  # three more calls
    ledger.close()
    assert calendar_row(pages.route("/")[2]) == first  # the same view within SAVINGS_REUSE_S
    clock.advance(SAVINGS_REUSE_S + 1)
    assert "<td class=num>6</td>" in calendar_row(pages.route("/")[2])
    # another view is computed afresh, whatever the time
    assert "<td class=num>6</td>" in calendar_row(pages.route("/?project=/home/dev/code/weather-dash")[2])
