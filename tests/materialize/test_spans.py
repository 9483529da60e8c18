"""Opik record shapes: usage keys, timestamps, truncation, schema validity."""

import json

from opik_cipx.ids import derived_uuid7
from opik_cipx.materialize.spans import (
    ERROR_TEXT_MAX_CHARS,
    TRUNCATED_KEY,
    LlmFields,
    Span,
    bounded,
    call_error_info,
    error_info,
    iso_z,
    opik_usage,
    span_record,
    tool_error_info,
    trace_record,
)
from opik_cipx.materialize.usage import read_usage
from tests.opik_schema import problems

USAGE = {
    "input_tokens": 6, "cache_creation_input_tokens": 2006, "cache_read_input_tokens": 18861,
    "cache_creation": {"ephemeral_5m_input_tokens": 2006, "ephemeral_1h_input_tokens": 0},
    "server_tool_use": {"web_search_requests": 1}, "output_tokens": 10, "service_tier": "standard",
}


def test_usage_keys_as_opik_reads_anthropic_usage():
    usage = opik_usage(read_usage(USAGE))
    assert usage["prompt_tokens"] == 6 + 2006 + 18861
    assert usage["completion_tokens"] == 10
    assert usage["total_tokens"] == 6 + 2006 + 18861 + 10
    assert usage["original_usage.cache_creation.ephemeral_5m_input_tokens"] == 2006
    assert usage["original_usage.server_tool_use.web_search_requests"] == 1
    assert "original_usage.service_tier" not in usage  # only integers are allowed
    assert all(isinstance(v, int) for v in usage.values())
    assert opik_usage(read_usage(None)) is None and opik_usage(read_usage({})) is None


def test_timestamps_are_utc_z():
    assert iso_z(1_795_485_200_163_456_789) == "2026-11-24T01:53:20.163456Z"
    assert iso_z(0) == "1970-01-01T00:00:00.000000Z"
    assert iso_z(1_795_485_200_999_999_999) == "2026-11-24T01:53:20.999999Z"  # no float rounding


def test_oversized_values_are_cut_with_an_explicit_marker():
    small = {"a": "b"}
    assert bounded(small, 100) is small
    cut = bounded({"text": "x" * 10_000}, 1000)
    assert cut[TRUNCATED_KEY] is True
    assert cut["original_chars"] == len(json.dumps({"text": "x" * 10_000}))
    assert len(json.dumps(cut)) < 1200
    big = {"text": "x" * 10_000}
    cut = bounded(big, 1000, size=10_012, preview="wire text " * 200)  # size known: not serialized
    assert cut["original_chars"] == 10_012 and cut["preview"].startswith("wire text ")
    assert bounded(big, 20_000, size=10_012) is big


def test_records_validate_against_opik_write_schemas():
    trace_id = derived_uuid7(1_795_485_200_000, "trace", "s")
    span = span_record(Span(
        span_id=derived_uuid7(1_795_485_200_000, "llm", "c"), trace_id=trace_id, parent_span_id=None,
        project_name="p", name="main", span_type="llm", start_ns=1_795_485_200_000_000_000,
        end_ns=1_795_485_201_000_000_000, input={"messages": []}, output={"content": []},
        metadata={"cc": {}}, tags=["claude-code"], updated_ns=1_795_485_201_000_000_000,
        error_info=call_error_info({"type": "overloaded_error", "message": "Overloaded"}, None),
        llm=LlmFields(model="claude-opus-4-8", usage=opik_usage(read_usage(USAGE)), total_estimated_cost=0.01,
                      cost_version="2026-11-01", ttft_ms=12.5),
    ))
    trace = trace_record(
        trace_id=trace_id, project_name="p", name="say hello", start_ns=1_795_485_200_000_000_000,
        end_ns=1_795_485_201_000_000_000, thread_id="sess", input={"prompt": "hi"}, output=None,
        metadata={"cc": {}}, tags=[], updated_ns=1_795_485_201_000_000_000,
    )
    assert problems(span) == [] and problems(trace) == []
    assert span["body"]["provider"] == "anthropic"
    llm = {"model": "claude-opus-4-8", "total_estimated_cost": 0.01, "total_estimated_cost_version": "2026-11-01",
           "ttft": 12.5}
    assert {key: span["body"][key] for key in llm} == llm
    bad = {"kind": "span", "body": {**span["body"], "id": "not-a-uuid", "usage": {"x": 1.5}, "colour": "red"}}
    assert len(problems(bad)) == 3


OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}, "request_id": "req_1"}


def test_error_info_is_never_blank_where_opik_requires_text():
    api = call_error_info(OVERLOADED["error"], OVERLOADED)
    assert api["exception_type"] == "overloaded_error" and api["message"] == "Overloaded"
    assert json.loads(api["traceback"]) == OVERLOADED  # the error event or body, as JSON
    transport = call_error_info({"type": "upstream_error", "message": "ConnectionResetError: reset by peer"}, None)
    assert transport["traceback"] == "ConnectionResetError: reset by peer"
    tool = tool_error_info("Bash", "Exit code 2\nls: cannot access 'nope'")
    assert tool == {"exception_type": "tool_error", "message": "Exit code 2\nls: cannot access 'nope'",
                    "traceback": "Bash\nExit code 2\nls: cannot access 'nope'"}
    assert tool_error_info("Bash", "")["traceback"] == "Bash\n"
    for empty in (error_info("", "", ""), error_info("  ", "", " \n"), call_error_info({}, None)):
        assert empty["exception_type"].strip() and empty["traceback"].strip()
    long = tool_error_info("Bash", "x" * 100_000)
    assert len(long["traceback"]) == ERROR_TEXT_MAX_CHARS and long["traceback"].endswith("\u2026")
    assert len(long["message"]) == 500
