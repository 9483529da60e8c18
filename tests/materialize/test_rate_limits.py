"""Rate-limit headers: parsed generically, in the span metadata, the latest kept for the stats."""

import importlib.util

from hypothesis import given
from hypothesis import strategies as st

from opik_cipx.materialize.materializer import Materializer
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.materialize.rate_limits import RateLimitObserver, epoch_seconds, parse_rate_limits, warning
from tests.claude_code_corpus import FIXTURES, exchanges
from tests.materialize.test_materializer import cc, config, llm

RATE_LIMITS = FIXTURES.parent / "rate-limits"  # derived from the corpus: see its README


def test_unified_headers_become_windows_and_the_overall_state():
    limits = parse_rate_limits([
        ["Anthropic-Ratelimit-Unified-Status", "allowed_warning"],
        ["anthropic-ratelimit-unified-reset", "1781290000"],
        ["anthropic-ratelimit-unified-representative-claim", "five_hour"],
        ["anthropic-ratelimit-unified-5h-utilization", "0.42"],
        ["anthropic-ratelimit-unified-5h-reset", "1781290000"],
        ["anthropic-ratelimit-unified-5h-status", "allowed"],
        ["anthropic-ratelimit-unified-7d-utilization", "1.07"],  # a fraction that can exceed 1
        ["anthropic-ratelimit-unified-7d-surpassed-threshold", "0.75"],
        ["anthropic-ratelimit-unified-7d_oi-utilization", "0.05"],
        ["anthropic-ratelimit-unified-overage-status", "rejected"],
        ["anthropic-ratelimit-unified-overage-disabled-reason", "org_level_disabled"],
        ["anthropic-ratelimit-unified-fallback-percentage", "0.5"],
        ["content-type", "text/event-stream"],
    ])
    assert limits["status"] == "allowed_warning" and limits["resets_at"] == 1781290000
    assert limits["representative_claim"] == "five_hour"
    assert list(limits["windows"]) == ["5h", "7d", "7d_oi", "fallback", "overage"]
    assert limits["windows"]["5h"] == {"source": "unified", "utilization": 0.42, "resets_at": 1781290000,
                                       "status": "allowed"}
    assert limits["windows"]["7d"] == {"source": "unified", "utilization": 1.07, "surpassed_threshold": 0.75}
    assert limits["windows"]["overage"] == {"source": "unified", "status": "rejected",
                                            "other": {"disabled-reason": "org_level_disabled"}}
    assert limits["windows"]["fallback"]["other"] == {"percentage": "0.5"}
    assert warning(limits["windows"]["7d"]) and not warning(limits["windows"]["5h"])
    assert warning(limits["windows"]["overage"])  # rejected


def test_classic_headers_become_windows_with_a_derived_utilization():
    limits = parse_rate_limits([
        ["anthropic-ratelimit-requests-limit", "4000"],
        ["anthropic-ratelimit-requests-remaining", "3000"],
        ["anthropic-ratelimit-requests-reset", "2026-11-24T01:53:21Z"],
        ["anthropic-ratelimit-input-tokens-limit", "2000000"],
        ["anthropic-ratelimit-input-tokens-remaining", "1979000"],
    ])
    assert list(limits["windows"]) == ["requests", "input-tokens"]
    assert limits["windows"]["requests"] == {"source": "classic", "limit": 4000, "remaining": 3000,
                                             "resets_at": 1795485201, "utilization": 0.25}
    assert limits["windows"]["input-tokens"]["utilization"] == 0.0105


def test_new_window_names_and_attributes_are_kept_and_bad_numbers_stay_raw():
    limits = parse_rate_limits([
        ["anthropic-ratelimit-unified-30d_fable-utilization", "0.3"],
        ["anthropic-ratelimit-unified-30d_fable-velocity", "fast"],
        ["anthropic-ratelimit-unified-5h-utilization", "lots"],
        ["anthropic-ratelimit-unified-brand-new", "x"],
        ["anthropic-ratelimit-unified-solo", "y"],
    ])
    assert limits["windows"]["30d_fable"] == {"source": "unified", "utilization": 0.3, "other": {"velocity": "fast"}}
    assert limits["windows"]["5h"] == {"source": "unified", "other": {"utilization": "lots"}}
    assert limits["windows"]["brand"] == {"source": "unified", "other": {"new": "x"}}
    assert limits["other"] == {"solo": "y"}
    assert parse_rate_limits([["content-type", "application/json"]]) is None
    assert parse_rate_limits(None) is None


def test_reset_times_in_either_format():
    assert epoch_seconds("1781290000") == 1781290000
    assert epoch_seconds("2026-09-17T09:13:32Z") == epoch_seconds("2026-09-17T09:13:32+00:00") == 1789636412
    assert epoch_seconds("soon") is None


NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=0, max_size=30)


@given(st.lists(st.tuples(st.one_of(NAMES, NAMES.map(lambda n: "anthropic-ratelimit-" + n),
                                    NAMES.map(lambda n: "anthropic-ratelimit-unified-" + n)),
                          st.text(max_size=80)), max_size=40))
def test_any_headers_parse_and_every_rate_limit_header_is_kept_somewhere(pairs):
    limits = parse_rate_limits([list(pair) for pair in pairs])
    ours = [name for name, _ in pairs if name.startswith("anthropic-ratelimit-")]
    if not ours:
        assert limits is None
        return
    assert limits is not None
    kept = set(limits.get("other", {}))
    for window, entry in limits["windows"].items():
        assert entry["source"] in ("unified", "classic")
        kept |= {f"{window}-{a}" for a in entry.get("other", {})}
        kept |= {f"{window}-{a.replace('_', '-')}" for a in entry if a not in ("source", "other")}
        kept |= {f"{window}-reset"} if "resets_at" in entry else set()
    for key in ("status", "resets_at", "representative_claim"):
        if key in limits:
            kept.add({"resets_at": "reset"}.get(key, key.replace("_", "-")))
    for name in ours:
        rest = name.removeprefix("anthropic-ratelimit-unified-") if name.startswith(
            "anthropic-ratelimit-unified-") else name.removeprefix("anthropic-ratelimit-")
        assert rest in kept or len(limits["windows"]) == 32, (name, limits)


def test_the_observer_keeps_the_newest_value_of_each_window():
    observer = RateLimitObserver()
    assert observer.section() == {"observed_at": None, "status": None, "representative_claim": None,
                                  "resets_at": None, "windows": {}}
    newer = parse_rate_limits([["anthropic-ratelimit-unified-5h-utilization", "0.5"],
                               ["anthropic-ratelimit-unified-status", "allowed"]])
    older = parse_rate_limits([["anthropic-ratelimit-unified-5h-utilization", "0.4"],
                               ["anthropic-ratelimit-unified-7d-utilization", "0.2"],
                               ["anthropic-ratelimit-unified-status", "rejected"]])
    observer.note(newer, 2_000_000_000_000_000_000)
    observer.note(older, 1_000_000_000_000_000_000)  # materialized late, after a restart
    section = observer.section()
    assert section["status"] == "allowed" and section["observed_at"] == "2033-05-18T03:33:20.000Z"
    assert section["windows"]["5h"]["utilization"] == 0.5
    assert section["windows"]["7d"] == {"source": "unified", "utilization": 0.2,
                                        "observed_at": "2001-09-09T01:46:40.000Z"}


def test_every_window_of_the_fixtures_is_in_the_span_metadata_and_the_observer(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    spans = {}
    for scenario in ("oauth", "api_key"):
        for number, capture in exchanges(scenario, RATE_LIMITS):
            spans[f"{scenario}/{number}"] = llm(materializer.materialize(capture).records)
    last = cc(spans["oauth/003"])["rate_limits"]
    assert list(last["windows"]) == ["5h", "7d", "7d_mythos", "7d_oi", "7d_opus", "fallback", "overage"]
    assert last["status"] == "allowed_warning" and last["windows"]["7d"]["surpassed_threshold"] == 0.75
    assert "7d_mythos" not in cc(spans["oauth/002"])["rate_limits"]["windows"]
    assert list(cc(spans["api_key/001"])["rate_limits"]["windows"]) == [
        "requests", "tokens", "input-tokens", "output-tokens"]
    section = materializer.rate_limits.section()
    assert set(section["windows"]) == {"5h", "7d", "7d_mythos", "7d_oi", "7d_opus", "fallback", "overage",
                                       "requests", "tokens", "input-tokens", "output-tokens"}
    # no secret reaches the metadata: the OAuth request's credentials are not rate-limit headers
    assert "Bearer" not in str(spans["oauth/001"]["metadata"])


def test_a_call_without_rate_limit_headers_has_no_such_metadata(tmp_path):
    materializer = Materializer(config(tmp_path), load_price_table())
    span = llm(materializer.materialize(exchanges("simple")[1][1]).records)
    assert "rate_limits" not in cc(span)


def test_the_committed_fixtures_are_what_the_generator_writes():
    spec = importlib.util.spec_from_file_location("generate_rate_limits", RATE_LIMITS / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    committed = {str(path.relative_to(RATE_LIMITS)): path.read_text() for path in RATE_LIMITS.glob("*/*.json")}
    assert generator.build() == committed
