"""Why the cache missed: derived request pairs (tests/fixtures/cache-breaks), each flagged with
the right cause, item and extra cost; the lanes' state across restarts; its bounds."""

import copy
import importlib.util
import json

import pytest

from opik_cipx.materialize.cache_diagnosis import MAX_ITEMS, MAX_LANES, CacheLanes, PrefixReader, diagnose, lane_of
from opik_cipx.materialize.call_kind import CallKind
from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.materialize.usage import read_usage
from opik_cipx.wire.capture import Capture
from tests.claude_code_corpus import FIXTURES, exchange, exchanges
from tests.materialize.test_materializer import cc, config, llm, restarted

CACHE_BREAKS = FIXTURES.parent / "cache-breaks"  # derived from the corpus: see its README
# Published USD per million tokens (Anthropic's pricing page; prices.json cites it).
OPUS_4_8 = {"w5m": 6.25, "read": 0.5, "in": 5}
SONNET_4_6 = {"w5m": 3.75, "read": 0.3, "in": 3}


def generator():
    spec = importlib.util.spec_from_file_location("generate_cache_breaks", CACHE_BREAKS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def usage_of(scenario: str, number: str) -> dict:
    return generator().final_usage(json.loads((CACHE_BREAKS / scenario / f"{number}.response.json").read_text()))


def pair(tmp_path, scenario: str, restart: bool = False) -> dict:
    """`cc.cache` of the second call of a pair, materialized after the first."""
    materializer = Materializer(config(tmp_path), load_price_table())
    materializer.materialize(exchange(scenario, "001", CACHE_BREAKS))
    if restart:
        materializer = restarted(materializer, tmp_path)
    return cc(llm(materializer.materialize(exchange(scenario, "002", CACHE_BREAKS)).records))["cache"]


def expected_cost(scenario: str, rates: dict) -> tuple[int, float]:
    """(tokens written again, their extra cost) from the fixtures' own usage, by hand."""
    first, second = usage_of(scenario, "001"), usage_of(scenario, "002")
    should_read = first["cache_read_input_tokens"] + first["cache_creation_input_tokens"]
    lost = min(should_read - second["cache_read_input_tokens"], second["cache_creation_input_tokens"])
    return lost, lost * (rates["w5m"] - rates["read"]) / 1e6


@pytest.mark.parametrize("restart", [False, True])
@pytest.mark.parametrize("scenario, rates, cause, where, item", [
    ("ttl_expired", OPUS_4_8, "ttl_expired", None, "expired: 360 s since the previous call, TTL 300 s"),
    ("tool_changed", OPUS_4_8, "tools_changed",
     {"part": "tools", "index": 1, "bucket": "tools_builtin", "label": None, "tool": "Bash", "change": "changed"},
     "tool Bash changed"),
    ("mcp_disconnected", OPUS_4_8, "tools_changed",
     {"part": "tools", "index": 24, "bucket": "tools_mcp", "label": "notes", "tool": "mcp__notes__get_note",
      "change": "removed", "server_change": "disconnected"},
     "MCP server notes disconnected"),
    ("model_changed", SONNET_4_6, "model_changed", None, "model claude-opus-4-8 -> claude-sonnet-4-6"),
])
def test_each_derived_break_has_its_cause_item_and_extra_cost(tmp_path, scenario, rates, cause, where, item, restart):
    cache = pair(tmp_path, scenario, restart)
    found = cache["break"]
    lost, usd = expected_cost(scenario, rates)
    assert (found["cause"], found["causes"], found["where"], found["item"]) == (cause, [cause], where, item)
    assert found["lost_tokens"] == lost > 0
    assert found["extra_cost_usd"] == pytest.approx(usd, rel=1e-12)
    first = usage_of(scenario, "001")
    assert found["expected_read_tokens"] == first["cache_read_input_tokens"] + first["cache_creation_input_tokens"]
    assert cache["previous"]["ttl_s"] == 300


def test_an_unchanged_pair_is_not_flagged(tmp_path):
    cache = pair(tmp_path, "unchanged")
    assert cache["break"] is None
    assert cache["previous"]["cached_tokens"] == 19967 + 2168 and cache["previous"]["gap_s"] == 0.097
    assert cache["read_share"] == 0.9951 and cache["write_share"] == 0.0048 and cache["uncached_share"] == 0.0001


def test_the_committed_fixtures_are_what_the_generator_writes():
    committed = {str(path.relative_to(CACHE_BREAKS)): path.read_text() for path in CACHE_BREAKS.glob("*/*.json")}
    assert generator().build() == committed


def test_the_first_call_after_a_compaction_is_a_compaction_break(tmp_path):
    """The recorded /compact (compact/010) and the call after it (012): a new conversation."""
    materializer = Materializer(config(tmp_path), load_price_table())
    caches = {n: cc(llm(materializer.materialize(c).records)).get("cache") for n, c in exchanges("compact")
              if n in ("001", "002", "004", "005", "007", "008", "010", "012")}
    assert caches["010"]["break"] is None  # the compaction request reads the conversation's cache
    found = caches["012"]["break"]
    assert found["cause"] == "compaction"
    # the claudeMd reminder is as before; the summary replaced the first prompt
    assert (found["where"]["message"], found["where"]["block"], found["where"]["bucket"]) == (0, 1, "compaction")


def variant(scenario: str, number: str, change) -> Capture:
    """A recorded exchange whose request body `change(body)` edits (compact JSON, as Claude Code)."""
    capture = exchange(scenario, number)
    body = json.loads(capture.request_body)
    change(body)
    capture.request_body = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return capture


def rebill(capture: Capture, read: int) -> Capture:
    response = {"headers": {}, "body": capture.response_parts[0].decode()}
    capture.response_parts = [generator().rebilled(response, read)["body"].encode()]
    return capture


def run_pair(tmp_path, first: Capture, second: Capture) -> dict:
    materializer = Materializer(config(tmp_path), load_price_table())
    materializer.materialize(first)
    return cc(llm(materializer.materialize(second).records))["cache"]


def test_an_edited_message_is_located_to_its_block_and_bucket(tmp_path):
    def edit(body):
        body["messages"][3]["content"][0]["content"] = "(cleared to save context)"  # a tool result, cleared

    cache = run_pair(tmp_path, exchange("tools", "003"), rebill(variant("tools", "004", edit), 19000))
    found = cache["break"]
    assert found["cause"] == "messages_changed"
    assert found["where"] == {"part": "messages", "message": 3, "block": 0, "bucket": "tool_io", "label": "Read",
                              "change": "changed"}
    assert found["item"] == "message 3 block 0 changed (tool_io: Read)"


def test_thinking_settings_that_change_break_the_messages_cache(tmp_path):
    def think_less(body):
        body["thinking"] = {"type": "disabled"}
        body["output_config"] = {"effort": "low"}

    cache = run_pair(tmp_path, exchange("tools", "002"), rebill(variant("tools", "003", think_less), 18000))
    found = cache["break"]
    assert found["cause"] == "thinking_changed" and found["where"] is None
    assert found["settings"] == {"from": {"thinking": {"type": "adaptive"}, "effort": "high"},
                                 "to": {"thinking": {"type": "disabled"}, "effort": "low"}}
    assert found["item"] == "thinking / effort adaptive/high -> disabled/low"


def one_hour(body):
    for block in body["system"]:
        if "cache_control" in block:
            block["cache_control"]["ttl"] = "1h"
    for message in body["messages"]:
        for block in message["content"] if isinstance(message["content"], list) else ():
            if "cache_control" in block:
                block["cache_control"]["ttl"] = "1h"


@pytest.mark.parametrize("gap_s, expired", [(360, False), (3700, True)])
def test_one_hour_breakpoints_expire_after_an_hour(tmp_path, gap_s, expired):
    first = variant("tools", "002", one_hour)
    second = rebill(variant("tools", "003", one_hour), 0)
    second.started_at_ns = first.started_at_ns + gap_s * 10**9
    found = run_pair(tmp_path, first, second)["break"]
    assert found["causes"] == (["ttl_expired"] if expired else ["unknown"])
    assert found["item"] == ("expired: 3700 s since the previous call, TTL 3600 s" if expired
                             else "prefix unchanged: evicted by Anthropic")


def test_a_call_that_reads_all_it_can_is_no_break_even_when_shorter(tmp_path):
    """A rewound conversation asks for less than the previous call cached: nothing was rewritten."""
    def rewind(body):
        body["messages"] = body["messages"][:2]

    second = variant("tools", "004", rewind)
    response = {"headers": {}, "body": second.response_parts[0].decode()}
    usage = generator().final_usage(response)
    prompt = usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    second = rebill(second, prompt)  # all of it read
    assert run_pair(tmp_path, exchange("tools", "003"), second)["break"] is None


def test_lanes_keep_the_main_loop_subagents_and_side_calls_apart(tmp_path):
    assert lane_of(CallKind("main")) == lane_of(CallKind("compaction")) == "main"
    assert lane_of(CallKind("subagent", agent_id="a1")) == "agent:a1"
    assert lane_of(CallKind("compaction", subagent=True, agent_id="a1")) == "agent:a1"
    assert lane_of(CallKind("side", side_kind="title")) == "side:title"
    assert lane_of(CallKind("count_tokens")) is None
    materializer = Materializer(config(tmp_path), load_price_table())
    caches = {n: cc(llm(materializer.materialize(c).records))["cache"]
              for n, c in exchanges("subagent") if c.method == "POST"}
    # the main loop's second call (005) is compared with its first (001), not with the subagent's
    assert caches["005"]["previous"]["capture_id"] == exchange("subagent", "001").id
    assert caches["004"]["previous"]["capture_id"] == exchange("subagent", "003").id


def test_the_lanes_are_bounded_and_hold_no_text():
    lanes = CacheLanes()
    body = json.loads(exchange("tools", "006").request_body)
    usage = read_usage({"input_tokens": 1, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 5})
    for n in range(MAX_LANES + 5):
        lanes.observe(f"agent:{n}", PrefixReader().prefix(body), usage, None, n, f"c{n}", compacted=False)
    snapshot = lanes.snapshot()
    assert [lane for lane, _ in snapshot] == [f"agent:{n}" for n in range(5, MAX_LANES + 5)]
    memory = snapshot[-1][1]
    assert "echo hi" not in json.dumps(snapshot) and "billing" not in json.dumps(snapshot)
    assert [name for name, _ in memory["tools"]][:2] == ["Agent", "Bash"]
    assert memory["messages"].count("|") == 11  # twelve messages, through the last breakpoint
    huge = copy.deepcopy(body)
    huge["messages"] = [{"role": "user", "content": [{"type": "text", "text": str(i)}]} for i in range(MAX_ITEMS)]
    huge["messages"][-1]["content"][0]["cache_control"] = {"type": "ephemeral"}
    lanes.observe("main", PrefixReader().prefix(huge), usage, None, 0, "big", compacted=False)
    kept = dict(lanes.snapshot())["main"]
    assert len(kept["tools"]) + len(kept["system"]) + len(kept["messages"].split(",")) + kept[
        "messages"].count("|") == MAX_ITEMS


def test_no_cache_diagnosis_without_usage_or_for_count_tokens(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    records = {n: materializer.materialize(c).records for n, c in exchanges("error")}
    assert "cache" not in cc(llm(records["001"]))  # a 529: nothing was read or written
    assert cc(llm(records["003"]))["cache"]["previous"] is None  # the failed calls are no reference


def test_the_prefix_stops_at_the_last_breakpoint_and_skips_the_billing_header():
    body = json.loads(exchange("tools", "002").request_body)
    prefix = PrefixReader().prefix(body)
    blocks = sum(len(m) for m in prefix.messages)
    assert prefix.cached == (26, len(prefix.system), blocks)  # [u, s, a, u]: the breakpoint on the last user block
    assert all(label != "billing_header" for _, label, _ in prefix.system)
    assert prefix.ttl_s == 300 and prefix.settings == {"thinking": {"type": "adaptive"}, "effort": "high"}
    assert diagnose(None, prefix, read_usage({"input_tokens": 0}), None, 0, False).to_json() == {
        "read_share": None, "write_share": None, "uncached_share": None, "previous": None, "break": None}


def test_a_message_handed_over_again_as_the_same_object_gives_the_prefix_read_from_scratch():
    first = json.loads(exchange("tools", "002").request_body)
    following = json.loads(exchange("tools", "003").request_body)
    following["messages"][:len(first["messages"])] = first["messages"]  # as the request reader hands them over
    prefixes = PrefixReader()
    prefixes.prefix(first)  # its messages' digests are now kept
    assert prefixes.prefix(following) == PrefixReader().prefix(json.loads(json.dumps(following)))


def test_a_checkpoint_from_before_cache_diagnoses_restores_with_no_lanes(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    materializer.materialize(exchange("tools", "002"))
    snapshot = json.loads(json.dumps(materializer.snapshot()))
    for session in snapshot["sessions"]:
        del session["cache"]  # as an older opik-cipx wrote it
    fresh = Materializer(config(tmp_path), load_price_table())
    fresh.restore(snapshot)
    cache = cc(llm(fresh.materialize(exchange("tools", "003")).records))["cache"]
    assert cache["previous"] is None and cache["break"] is None  # compared with nothing, never a false break


def test_the_digests_kept_live_and_die_with_their_reader():
    """Each materializer owns its PrefixReader: the messages it kept by identity stay alive only
    as long as the reader does (the process-wide memo they replace kept them forever)."""
    import gc
    import weakref

    class Message(dict):  # a dict that can be watched
        pass

    body = json.loads(exchange("tools", "002").request_body)
    body["messages"] = [Message(m) for m in body["messages"]]
    watched = [weakref.ref(m) for m in body["messages"]]
    reader = PrefixReader()
    first = reader.prefix(body)
    assert reader.prefix(body) == first == PrefixReader().prefix(json.loads(json.dumps(body)))
    del body, reader
    gc.collect()
    assert [ref() for ref in watched] == [None] * len(watched)
