"""Opik record shapes: TraceWrite / SpanWrite bodies wrapped as spool records (docs/ARCHITECTURE.md, "Spool records").

Pure builders. Callers pass ids, times and already-computed metadata; this module only knows
Opik's field names, its usage-key convention and how to bound oversized input/output.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opik_cipx.materialize.usage import Usage

PROVIDER = "anthropic"
TRUNCATED_KEY = "_opik_cipx_truncated"


def iso_z(ns: int) -> str:
    """ISO-8601 UTC with microseconds and a `Z` suffix, from epoch nanoseconds."""
    seconds, micros = divmod(ns // 1000, 1_000_000)
    dt = datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def opik_usage(usage: Usage | None) -> dict[str, int] | None:
    """Usage the way Opik reads Anthropic usage: OpenAI-style totals plus `original_usage.*`.

    `prompt_tokens` counts every input-side token (uncached input + cache reads + cache
    writes), `completion_tokens` the output tokens (thinking included), both as the response's
    top-level fields say. Original keys are flattened with dots; only integer values are kept, as
    the API requires.
    """
    if usage is None:
        return None
    out: dict[str, int] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                flatten(f"{prefix}.{key}", inner)
        elif isinstance(value, int) and not isinstance(value, bool):
            out[prefix] = value

    flatten("original_usage", usage.original)
    completion = usage.original.get("output_tokens")
    completion = completion if isinstance(completion, int) and not isinstance(completion, bool) else 0
    out.update(prompt_tokens=usage.prompt_tokens, completion_tokens=completion,
               total_tokens=usage.prompt_tokens + completion)
    return out


def bounded(value: Any, limit_chars: int, size: int | None = None, preview: str | None = None) -> Any:
    """`value` if its JSON is within `limit_chars`, else an explicit truncation marker.

    `size` is the JSON length when the caller already knows it (from the wire), and `preview`
    the text to show the start of: with both, a large value is never serialized just to be
    measured and cut, which would hold the GIL for milliseconds per megabyte.
    """
    if value is None:
        return None
    text = None
    if size is None:
        text = json.dumps(value, ensure_ascii=False)
        size = len(text)
    if size <= limit_chars:
        return value
    if preview is None:
        preview = text if text is not None else json.dumps(value, ensure_ascii=False)
    return {
        TRUNCATED_KEY: True,
        "original_chars": size,
        "limit_chars": limit_chars,
        "preview": preview[: max(0, limit_chars - 200)],
    }


def trace_record(
    *,
    trace_id: str,
    project_name: str,
    name: str,
    start_ns: int,
    end_ns: int,
    thread_id: str | None,
    input: Any,
    output: Any,
    metadata: dict[str, Any],
    tags: list[str],
    updated_ns: int,
    error_info: dict[str, str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": trace_id,
        "project_name": project_name,
        "name": name,
        "start_time": iso_z(start_ns),
        "end_time": iso_z(end_ns),
        "metadata": metadata,
        "tags": tags,
        "last_updated_at": iso_z(updated_ns),
    }
    if thread_id:
        body["thread_id"] = thread_id
    if input is not None:
        body["input"] = input
    if output is not None:
        body["output"] = output
    if error_info:
        body["error_info"] = error_info
    return {"kind": "trace", "body": body}


@dataclass(frozen=True, slots=True)
class LlmFields:
    """What only an `llm` span carries: the model, and the usage and cost Opik charts."""

    model: str | None
    usage: dict[str, int] | None  # `opik_usage`
    total_estimated_cost: float | None
    cost_version: str | None  # the price table's date
    ttft_ms: float | None


@dataclass(frozen=True, slots=True)
class Span:
    """A span's fields, in Opik's words (SpanWrite), before `span_record` makes them its body."""

    span_id: str
    trace_id: str
    parent_span_id: str | None
    project_name: str
    name: str
    span_type: str  # "llm", "tool" or "general"
    start_ns: int
    end_ns: int | None  # None: still running
    input: Any
    output: Any
    metadata: dict[str, Any]
    tags: list[str]
    updated_ns: int
    error_info: dict[str, str] | None = None
    llm: LlmFields | None = None  # an `llm` span's own fields


def span_record(span: Span) -> dict[str, Any]:
    """The spool record of `span`: Opik's SpanWrite body, absent values left out."""
    body: dict[str, Any] = {
        "id": span.span_id,
        "trace_id": span.trace_id,
        "project_name": span.project_name,
        "name": span.name,
        "type": span.span_type,
        "start_time": iso_z(span.start_ns),
        "metadata": span.metadata,
        "tags": span.tags,
        "last_updated_at": iso_z(span.updated_ns),
    }
    if span.end_ns is not None:
        body["end_time"] = iso_z(max(span.start_ns, span.end_ns))
    if span.parent_span_id:
        body["parent_span_id"] = span.parent_span_id
    if span.input is not None:
        body["input"] = span.input
    if span.output is not None:
        body["output"] = span.output
    if span.span_type == "llm":
        body["provider"] = PROVIDER
    if (llm := span.llm) is not None:
        if llm.model:
            body["model"] = llm.model
        if llm.usage:
            body["usage"] = llm.usage
        if llm.total_estimated_cost is not None:
            body["total_estimated_cost"] = llm.total_estimated_cost
            if llm.cost_version:
                body["total_estimated_cost_version"] = llm.cost_version
        if llm.ttft_ms is not None:
            body["ttft"] = llm.ttft_ms
    if span.error_info:
        body["error_info"] = span.error_info
    return {"kind": "span", "body": body}


ERROR_TEXT_MAX_CHARS = 2000  # the longest traceback an error span carries (the full text is in its output)


def exception_type(kind: str) -> str:
    """An error type as Opik's ErrorInfo carries it: never blank."""
    return kind.strip() or "error"


def error_info(error_type: str, message: str, traceback: str) -> dict[str, str]:
    """Opik's ErrorInfo. Opik declares `exception_type` and `traceback` @NotBlank, so neither is ever
    blank here (a blank traceback falls back to the exception type); the traceback is bounded."""
    kind = exception_type(error_type)
    if len(traceback) > ERROR_TEXT_MAX_CHARS:
        traceback = traceback[: ERROR_TEXT_MAX_CHARS - 1] + "\u2026"
    return {"exception_type": kind, "message": message, "traceback": traceback if traceback.strip() else kind}


def call_error_info(error: dict[str, str], event: dict[str, Any] | None) -> dict[str, str]:
    """A failed or cut-off call: the error's type and message; as traceback, the API's error event
    (or error body) as JSON when there was one, else the error's own line (transport errors:
    the upstream_error line)."""
    kind, message = str(error.get("type") or "api_error"), str(error.get("message") or "")
    detail = json.dumps(event, ensure_ascii=False, separators=(",", ":")) if event is not None else message
    return error_info(kind, message, detail)


def tool_error_info(tool_name: str, result_text: str) -> dict[str, str]:
    """A failed tool call: the start of its result as message; the tool name and result as traceback."""
    return error_info("tool_error", result_text[:500], f"{tool_name}\n{result_text}")
