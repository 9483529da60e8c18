"""The test-side Opik checker refuses what Opik's validation annotations refuse (tests/opik_schema.py)."""

import pytest

from opik_cipx.ids import derived_uuid7
from tests.opik_schema import batch_problems, problems

TRACE_ID = derived_uuid7(1_795_485_200_000, "trace")
SPAN = {
    "id": derived_uuid7(1_795_485_200_000, "span"), "trace_id": TRACE_ID, "project_name": "p", "name": "main",
    "type": "llm", "start_time": "2026-11-24T01:53:20.163456Z", "end_time": "2026-11-24T01:53:21.000000Z",
    "last_updated_at": "2026-11-24T01:53:21.000000Z", "usage": {"prompt_tokens": 3}, "total_estimated_cost": 0.0,
    "error_info": {"exception_type": "overloaded_error", "message": "", "traceback": "{}"}, "tags": ["a"],
}
TRACE = {
    "id": TRACE_ID, "project_name": "p", "name": "", "start_time": "2026-11-24T01:53:20Z",
    "last_updated_at": "2299-12-31T23:59:59.999999Z", "thread_id": "s",
}


def test_valid_records_pass():
    assert problems({"kind": "span", "body": SPAN}) == []
    assert problems({"kind": "trace", "body": TRACE}) == []  # a trace name may be blank in Opik
    assert batch_problems("spans", [SPAN]) == [] and batch_problems("traces", [TRACE]) == []


@pytest.mark.parametrize("change, expected", [
    ({"error_info": {"exception_type": "x", "message": "m", "traceback": ""}}, "traceback: @NotBlank"),
    ({"error_info": {"exception_type": " \n", "traceback": "t"}}, "exception_type: @NotBlank"),
    ({"error_info": {"exception_type": "x"}}, "traceback: @NotBlank"),
    ({"error_info": {"exception_type": "x", "traceback": "t", "stack": "s"}}, "stack: unknown field"),
    ({"error_info": {"exception_type": "x", "traceback": "t", "message": 3}}, "message: not a string"),
    ({"project_name": "  "}, "project_name: must not be blank"),
    ({"name": ""}, "name: must not be blank"),
    ({"trace_id": None}, "trace_id: not a UUIDv7"),
    ({"parent_span_id": "6f1c7a3e-0000-4000-8000-000000000000"}, "parent_span_id: not a UUIDv7"),
    ({"id": "6f1c7a3e-0000-4000-8000-000000000000"}, "id: not a UUIDv7"),
    ({"type": "agent"}, "type: not a span type"),
    ({"start_time": "1969-12-31T23:59:59Z"}, "start_time: 1969-12-31T23:59:59Z is outside"),
    ({"end_time": "2262-04-11T23:47:16Z"}, "end_time: 2262-04-11T23:47:16Z is outside"),
    ({"last_updated_at": "2300-01-01T00:00:00Z"}, "last_updated_at: 2300-01-01T00:00:00Z is outside"),
    ({"start_time": "2026-11-24T01:53:20+00:00"}, "not an ISO-8601 UTC Z timestamp"),
    ({"total_estimated_cost": -0.01}, "total_estimated_cost: must be a number >= 0"),
    ({"usage": {"prompt_tokens": 2**31}}, "usage values must be 32-bit integers"),
    ({"usage": {"prompt_tokens": 1.5}}, "usage values must be 32-bit integers"),
    ({"tags": ["a", 1]}, "tags: not a list of strings"),
    ({"colour": "red"}, "unknown field 'colour'"),
])
def test_each_span_constraint_is_enforced(change, expected):
    found = problems({"kind": "span", "body": {**SPAN, **change}})
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize("missing", ["id", "project_name", "trace_id", "name", "type", "start_time", "last_updated_at"])
def test_required_span_fields(missing):
    assert problems({"kind": "span", "body": {k: v for k, v in SPAN.items() if k != missing}}) == [f"missing {missing}"]


@pytest.mark.parametrize("change, expected", [
    ({"error_info": {"exception_type": "x", "traceback": " "}}, "traceback: @NotBlank"),
    ({"project_name": ""}, "project_name: must not be blank"),
    ({"last_updated_at": "2300-01-01T00:00:00.000001Z"}, "is outside"),
    ({"thread_id": 7}, "thread_id: wrong type"),
    ({"type": "llm"}, "unknown field 'type'"),
])
def test_each_trace_constraint_is_enforced(change, expected):
    found = problems({"kind": "trace", "body": {**TRACE, **change}})
    assert len(found) == 1 and expected in found[0], found


def test_batch_size_duplicates_and_nested_records():
    assert batch_problems("spans", []) and batch_problems("spans", None)
    assert batch_problems("spans", [SPAN] * 1001)[0].startswith("spans: @NotNull @Size")
    assert batch_problems("spans", [SPAN, SPAN]) == ["spans: duplicate id in one batch (422)"]
    assert batch_problems("traces", [{**TRACE, "start_time": None}]) == [
        f"{TRACE_ID}: start_time: not an ISO-8601 UTC Z timestamp: None"]
