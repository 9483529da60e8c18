"""Opik's published write schemas (`Span_Write`, `Trace_Write` in the REST API's OpenAPI spec),
as a strict checker: unknown fields, wrong types, non-UUIDv7 ids, non-`Z` timestamps and
non-integer usage values are all reported."""

import re
from datetime import datetime

from opik_cipx.ids import is_uuid7

JSON_NODE = (dict, list, str)
SPAN_TYPES = {"general", "tool", "llm", "guardrail"}
Z_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")

SPAN_WRITE = {
    "id": "uuid", "project_name": str, "trace_id": "uuid", "parent_span_id": "uuid", "name": str,
    "type": "span_type", "start_time": "time", "end_time": "time", "input": JSON_NODE, "output": JSON_NODE,
    "metadata": JSON_NODE, "model": str, "provider": str, "tags": "tags", "usage": "usage",
    "error_info": "error_info", "last_updated_at": "time", "total_estimated_cost": (int, float),
    "total_estimated_cost_version": str, "ttft": (int, float),
}
TRACE_WRITE = {
    "id": "uuid", "project_name": str, "name": str, "start_time": "time", "end_time": "time",
    "input": JSON_NODE, "output": JSON_NODE, "metadata": JSON_NODE, "tags": "tags",
    "error_info": "error_info", "last_updated_at": "time", "thread_id": str, "ttft": (int, float),
}


def _check(field: str, kind, value) -> str | None:
    if kind == "uuid":
        return None if isinstance(value, str) and is_uuid7(value) else f"{field}: not a UUIDv7: {value!r}"
    if kind == "time":
        if not (isinstance(value, str) and Z_TIME.match(value)):
            return f"{field}: not an ISO-8601 UTC Z timestamp: {value!r}"
        datetime.fromisoformat(value.replace("Z", "+00:00"))
        return None
    if kind == "span_type":
        return None if value in SPAN_TYPES else f"{field}: not a span type: {value!r}"
    if kind == "tags":
        ok = isinstance(value, list) and all(isinstance(t, str) for t in value)
        return None if ok else f"{field}: not a list of strings"
    if kind == "usage":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in value.items())
        return None if ok else f"{field}: usage values must be integers: {value!r}"
    if kind == "error_info":
        ok = isinstance(value, dict) and {"exception_type", "traceback"} <= value.keys() and all(
            isinstance(v, str) for v in value.values()) and value.keys() <= {"exception_type", "message", "traceback"}
        return None if ok else f"{field}: bad ErrorInfo_Write {value!r}"
    return None if isinstance(value, kind) and not isinstance(value, bool) else f"{field}: wrong type {type(value).__name__}"


def problems(record: dict) -> list[str]:
    """Everything wrong with one spool record (`{"kind", "body"}`) against Opik's schema."""
    if set(record) != {"kind", "body"} or record["kind"] not in ("trace", "span"):
        return [f"not a spool record: {sorted(record)}"]
    schema = SPAN_WRITE if record["kind"] == "span" else TRACE_WRITE
    body = record["body"]
    out = [f"unknown field {key!r}" for key in body if key not in schema]
    required = ("start_time", "trace_id", "name", "type") if record["kind"] == "span" else ("start_time",)
    out += [f"missing {key}" for key in required + ("id", "project_name", "last_updated_at") if key not in body]
    out += [p for key, value in body.items() if key in schema and (p := _check(key, schema[key], value))]
    return out
