"""What Opik's batch endpoints accept, as a strict checker of spool records and batch bodies.

Read from comet-ml/opik, `apps/opik-backend/src/main/java/com/comet/opik/`:
- `api/SpanBatch.java`, `api/TraceBatch.java`: `spans` / `traces` is `@NotNull @Size(min = 1,
  max = 1000) @Valid List<...>` (so every item is validated as below);
- `api/resources/v1/priv/SpansResource.java`, `TracesResource.java` (`createSpans`,
  `createTraces`): the same id twice in one batch is refused (422);
- `api/Span.java` (`Span.View.Write`): `project_name` `@Pattern(NULL_OR_NOT_BLANK)`, `trace_id`
  `@NotNull`, `type` `@NotNull` (a `SpanType`: general, tool, llm, guardrail), `start_time`
  `@NotNull @InRange`, `end_time` `@InRange`, `last_updated_at` `@InRange`,
  `total_estimated_cost` `@DecimalMin("0.0")`, `usage` a `Map<String, Integer>` (32-bit ints),
  `tags` a `Set<String>`, `error_info` an `ErrorInfo`;
- `api/Trace.java` (`Trace.View.Write`): `project_name` `@Pattern(NULL_OR_NOT_BLANK)`,
  `start_time` `@NotNull @InRange`, `end_time` `@InRange`, `last_updated_at`
  `@InRange(before = MAX_ANALYTICS_DB)`, `error_info` an `ErrorInfo`, `thread_id` a string;
- `api/ErrorInfo.java`: `@NotBlank exception_type`, `message`, `@NotBlank traceback`;
- `api/validation/InRange.java`, `InRangeValidator.java`: an instant in
  [1970-01-01T00:00:00Z, 2262-04-11T23:47:16Z) by default, before 2300-01-01T00:00:00Z for
  `before = MAX_ANALYTICS_DB`;
- `utils/ValidationUtils.java`: `NULL_OR_NOT_BLANK` is absent, or holds a non-whitespace character;
- `domain/IdGenerator.java`: a record id must be a version-7 UUID.

Stricter than Opik, as our own contract (docs/ARCHITECTURE.md, "Spool records"): unknown fields
(Opik ignores them), a missing `id` / `project_name` / `last_updated_at`, a blank span `name`,
`trace_id` / `parent_span_id` that are not UUIDv7, timestamps without the `Z` suffix, and JSON
types Opik would coerce.
"""

import re
from datetime import UTC, datetime

from opik_cipx.ids import is_uuid7

JSON_NODE = (dict, list, str)
SPAN_TYPES = {"general", "tool", "llm", "guardrail"}
Z_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2262, 4, 11, 23, 47, 16, tzinfo=UTC)  # InRange default, exclusive
MAX_UPDATED = datetime(2300, 1, 1, tzinfo=UTC)  # InRange(before = MAX_ANALYTICS_DB)
INT32 = (-(2**31), 2**31 - 1)
BATCH_MAX = 1000
ERROR_INFO_KEYS = {"exception_type", "message", "traceback"}

SPAN_WRITE = {
    "id": "uuid", "project_name": "not_blank", "trace_id": "uuid", "parent_span_id": "uuid", "name": "not_blank",
    "type": "span_type", "start_time": "time", "end_time": "time", "input": JSON_NODE, "output": JSON_NODE,
    "metadata": JSON_NODE, "model": str, "provider": str, "tags": "tags", "usage": "usage",
    "error_info": "error_info", "last_updated_at": "updated_time", "total_estimated_cost": "cost",
    "total_estimated_cost_version": str, "ttft": (int, float),
}
TRACE_WRITE = {
    "id": "uuid", "project_name": "not_blank", "name": str, "start_time": "time", "end_time": "time",
    "input": JSON_NODE, "output": JSON_NODE, "metadata": JSON_NODE, "tags": "tags",
    "error_info": "error_info", "last_updated_at": "updated_time", "thread_id": str, "ttft": (int, float),
}
REQUIRED = {
    "span": ("id", "project_name", "trace_id", "name", "type", "start_time", "last_updated_at"),
    "trace": ("id", "project_name", "start_time", "last_updated_at"),
}


def blank(value: object) -> bool:
    """True unless `value` is a string holding a non-whitespace character (`@NotBlank`)."""
    return not isinstance(value, str) or not value.strip()


def _time(field: str, value: object, before: datetime) -> str | None:
    if not (isinstance(value, str) and Z_TIME.match(value)):
        return f"{field}: not an ISO-8601 UTC Z timestamp: {value!r}"
    moment = datetime.fromisoformat(value)
    if not MIN_TIME <= moment < before:
        return f"{field}: {value} is outside Opik's range [{MIN_TIME:%Y-%m-%d}, {before:%Y-%m-%d})"
    return None


def _error_info(field: str, value: object) -> list[str]:
    if not isinstance(value, dict):
        return [f"{field}: not an ErrorInfo object: {value!r}"]
    out = [f"{field}.{key}: unknown field" for key in value if key not in ERROR_INFO_KEYS]
    out += [f"{field}.{key}: @NotBlank, got {value.get(key)!r}" for key in ("exception_type", "traceback")
            if blank(value.get(key))]
    if "message" in value and not isinstance(value["message"], str):
        out.append(f"{field}.message: not a string")
    return out


def _check(field: str, kind, value) -> list[str]:
    if kind == "uuid":
        return [] if isinstance(value, str) and is_uuid7(value) else [f"{field}: not a UUIDv7: {value!r}"]
    if kind == "not_blank":
        return [f"{field}: must not be blank: {value!r}"] if blank(value) else []
    if kind in ("time", "updated_time"):
        problem = _time(field, value, MAX_UPDATED if kind == "updated_time" else MAX_TIME)
        return [problem] if problem else []
    if kind == "span_type":
        return [] if value in SPAN_TYPES else [f"{field}: not a span type: {value!r}"]
    if kind == "tags":
        ok = isinstance(value, list) and all(isinstance(t, str) for t in value)
        return [] if ok else [f"{field}: not a list of strings"]
    if kind == "usage":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and INT32[0] <= v <= INT32[1]
            for k, v in value.items())
        return [] if ok else [f"{field}: usage values must be 32-bit integers: {value!r}"]
    if kind == "cost":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
        return [] if ok else [f"{field}: must be a number >= 0 (@DecimalMin 0.0): {value!r}"]
    if kind == "error_info":
        return _error_info(field, value)
    ok = isinstance(value, kind) and not isinstance(value, bool)
    return [] if ok else [f"{field}: wrong type {type(value).__name__}"]


def problems(record: dict) -> list[str]:
    """Everything wrong with one spool record (`{"kind", "body"}`) against Opik's write models."""
    if not isinstance(record, dict) or set(record) != {"kind", "body"} or record["kind"] not in REQUIRED:
        return [f"not a spool record: {sorted(record) if isinstance(record, dict) else record!r}"]
    body = record["body"]
    if not isinstance(body, dict):
        return ["body is not an object"]
    schema = SPAN_WRITE if record["kind"] == "span" else TRACE_WRITE
    out = [f"unknown field {key!r}" for key in body if key not in schema]
    out += [f"missing {key}" for key in REQUIRED[record["kind"]] if key not in body]
    for key, value in body.items():
        if key in schema:
            out += _check(key, schema[key], value)
    return out


def batch_problems(field_name: str, items: object) -> list[str]:
    """What is wrong with the `spans` / `traces` list of one batch request body."""
    if not isinstance(items, list) or not 1 <= len(items) <= BATCH_MAX:
        return [f"{field_name}: @NotNull @Size(min = 1, max = {BATCH_MAX}) list expected"]
    ids = [item.get("id") for item in items if isinstance(item, dict) and "id" in item]
    out = [f"{field_name}: duplicate id in one batch (422)"] if len(set(ids)) != len(ids) else []
    kind = "span" if field_name == "spans" else "trace"
    for item in items:
        found = problems({"kind": kind, "body": item})
        out += [f"{item.get('id') if isinstance(item, dict) else '?'}: {problem}" for problem in found]
    return out
