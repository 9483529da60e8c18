"""The recorded corpus through the real daemon into a fake Opik, read by Opik's Cost Intelligence rules
(tests/cost_intelligence.py) from what the fake Opik stored, in arrival order."""

import math

from tests import cost_intelligence as ci
from tests.claude_code_corpus import SCENARIOS, request, requests
from tests.conftest import DaemonProcess, wait_for
from tests.fake_opik import API_KEY, WORKSPACE, FakeOpik
from tests.test_end_to_end import replay_scenario


def llm_calls() -> int:
    """Model calls of the corpus that get an llm span (every Messages API call but count_tokens)."""
    return sum(request(scenario, number)["path"].startswith("/v1/messages?")
               for scenario in SCENARIOS for number, _ in requests(scenario))


def test_every_llm_span_the_daemon_ships_is_ingested_and_gives_back_its_usage(home, upstream):
    expected = llm_calls()
    with FakeOpik() as opik:
        daemon = DaemonProcess(home, upstream.url, OPIK_CIPX_BASE_URL=opik.url, OPIK_CIPX_API_KEY=API_KEY,
                               OPIK_CIPX_WORKSPACE=WORKSPACE)
        try:
            for scenario in SCENARIOS:
                replay_scenario(daemon, upstream, scenario)

            def llm_spans() -> int:
                return sum(span.get("type") == "llm" for span in opik.spans.values())

            wait_for(lambda: llm_spans() == expected, timeout_s=60, what=f"{expected} llm spans at the fake Opik")
            assert opik.violations == []
            ingested = ci.ingest(opik.arrivals())
        finally:
            assert daemon.stop() == 0
    assert len(ingested.spends) == expected == 43 and ingested.repeated_creates == ()
    for row in ingested.spends.values():
        assert row.project == ci.PROJECT and not [block for block in row.blocks if block.residual]
        for tier, tokens in ci.allocated(row).items():
            assert math.isclose(tokens, row.usage[tier], rel_tol=1e-9, abs_tol=1e-6), (row.span_id, tier)
    assert ci.unattributed_input_share(ingested) <= 0.03
    assert set(ci.breakdown(ingested, "mcp_servers")) == {"weather", "notes"}
    assert {"release-notes", "lint-rules"} <= set(ci.breakdown(ingested, "skills"))
    assert "/home/dev/.claude/CLAUDE.md" in ci.breakdown(ingested, "memory")
