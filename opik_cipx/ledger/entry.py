"""One call's ledger rows, derived from its call record (docs/ARCHITECTURE.md, "Call record").

Pure: the same record always gives the same entry (the local day aside, which follows the
machine's time zone), so re-materializing a capture rewrites identical rows. Everything comes
from the `CallRecord` the materializer made (exchange, kind, session, identity, usage, cost,
attribution, output split, cache diagnosis, rate limits, launches): the ledger never reads an
Opik record, and never re-prices, re-attributes or re-diagnoses.

Detail rows split the call's cost over buckets: each request bucket (and each labelled part
of one) gets its character share of the input-side tokens and cost; `output` holds the output
tokens and cost (labelled thinking / text / tool_use by character share); `web_search` the
search fees. So the `''` rows of one call add up to its total cost. Labels are kept for every
bucket except `system_prompt` sections and `tools_builtin` tool definitions, which are the
same in every call (the call page paints them while the raw capture is stored).

What a call says about its session's label (`SessionText`): a `side:title` call's answer is
Claude Code's title for the session (JSON `{"title": ...}`, a `<title>` tag or plain text, as its
title prompts have asked); a main-loop call's prompt (the typed text, else the slash command) is
a candidate for the session's first prompt (the writer keeps the earliest). Both are one line of
at most `LABEL_CHARS` characters; with content capture off (`keep_text` False) neither is kept,
so the ledger holds no prompt or answer text.

What `advise` reads (`Entry.parts`, and the `calls` columns of schema v5): the definition groups of
the request with their tokens by cache tier and whether the call used them, the conversation it
read from the cache (`ledger/call_parts.py`), and what re-pricing the call needs besides its token
counts (the usage's `speed`, `inference_geo` and `iterations`).
"""

import json
import re
from dataclasses import dataclass
from typing import Any

from opik_cipx.ledger.call_parts import CallFacts, PartRow, call_facts
from opik_cipx.ledger.periods import local_day
from opik_cipx.materialize.call import CallRecord
from opik_cipx.materialize.pricing import Cost
from opik_cipx.materialize.turns import turn_prompt
from opik_cipx.materialize.usage import Usage

OUTPUT = "output"
WEB_SEARCH = "web_search"
UNLABELLED_BUCKETS = frozenset({"system_prompt", "tools_builtin"})
_MTOK = 1_000_000
LABEL_CHARS = 200  # the longest title or first prompt the ledger keeps
_TITLE_TAG = re.compile(r"<title>(.*?)</title>", re.S | re.I)
_FENCE = re.compile(r"^```[a-z]*\s*|\s*```$")


@dataclass(frozen=True)
class Detail:
    """One bucket (`detail == ""`) or one labelled part of it, within one call."""

    bucket: str
    detail: str
    chars: int
    tokens: float
    cost_usd: float | None


@dataclass(frozen=True)
class SessionText:
    """What one call says about its session's label: Claude Code's title, or its prompt (a
    candidate for the first prompt); None when it says nothing."""

    title: str | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class Entry:
    """`call`: column -> value of the `calls` row; `details`: its bucket rows; `launches`:
    (Agent tool span id, id of the llm span whose response asked for it) seen in the records;
    `rate_limits`: a row of `schema.RATE_LIMIT_COLUMNS` per window its response carried;
    `session`: what it says about its session's label; `parts`: its definition groups
    (`call_parts.PartRow`)."""

    call: dict[str, Any]
    details: tuple[Detail, ...]
    launches: tuple[tuple[str, str], ...]
    rate_limits: tuple[tuple, ...] = ()
    session: SessionText = SessionText()
    parts: tuple[PartRow, ...] = ()


def ledger_entry(call: CallRecord, keep_text: bool = True) -> Entry:
    """The ledger rows of one call; `keep_text` False (content capture off): no title or prompt."""
    facts = call_facts(call)
    return Entry(call=_row(call, facts), details=tuple(_details(call)), launches=tuple(call.launches),
                 rate_limits=_rate_limits(call), session=session_text(call) if keep_text else SessionText(),
                 parts=facts.parts)


def session_text(call: CallRecord) -> SessionText:
    """The title a `side:title` call answered, or the prompt of a main-loop call."""
    kind = call.kind
    if kind.kind == "side" and kind.side_kind == "title" and not call.error_type:
        answer = "".join(b.get("text") or "" for b in call.response.content if b.get("type") == "text")
        return SessionText(title=title_of(answer))
    if kind.kind == "main" and not kind.agent_id:
        return SessionText(prompt=one_line(turn_prompt(call.attribution.facts)))
    return SessionText()


def title_of(answer: str) -> str | None:
    """The title in a title call's answer: `{"title": ...}` (fenced or not), `<title>...</title>`,
    else its first line; None when there is none."""
    text = _FENCE.sub("", answer.strip())
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        text = doc["title"] if isinstance(doc.get("title"), str) else ""
    elif tag := _TITLE_TAG.search(text):
        text = tag.group(1)
    first = next((line for line in text.splitlines() if line.strip()), "")
    return one_line(first.strip().strip("\"'`*#").strip())


def one_line(text: str | None) -> str | None:
    """`text` on one line (whitespace runs made one space), cut to `LABEL_CHARS`; None when empty."""
    line = " ".join((text or "").split())
    if not line:
        return None
    return line if len(line) <= LABEL_CHARS else line[:LABEL_CHARS - 1].rstrip() + "\u2026"


def _row(call: CallRecord, facts: CallFacts) -> dict[str, Any]:
    """The `calls` row."""
    x, kind, usage, cost = call.exchange, call.kind, call.usage or NO_USAGE, call.cost
    git, cache = call.session.git, call.cache
    previous, found = (cache.previous, cache.cache_break) if cache else (None, None)
    breakdown = cost.breakdown if cost else None
    return {
        "capture_id": x.capture_id,
        "started_at_ns": x.started_at_ns,
        "ended_at_ns": x.ended_at_ns,
        "day": local_day(x.started_at_ns),
        "session_id": call.session.id,
        "project_dir": call.session.cwd,
        "git_branch": git.branch if git else None,
        "git_remote": git.remote if git else None,
        "user_email": call.identity.user_email,
        "org_name": call.identity.org_name,
        "model": call.model,
        "kind": kind.kind,
        "side_kind": kind.side_kind,
        "agent_id": kind.agent_id,
        "parent_agent_id": kind.parent_agent_id,
        "agent_type": call.agent.subagent_type if call.agent else None,
        "trace_id": call.trace_id,
        "span_id": call.span_id,
        "parent_span_id": call.parent_span_id,
        "status": x.status,
        "error_type": call.error_type or ("client_aborted" if x.client_aborted else None),
        "request_id": call.response.request_id,
        "message_id": call.response.message_id,
        "stop_reason": call.response.stop_reason,
        "input_tokens": usage.input,
        "cache_creation_input_tokens": usage.cache_write,
        "cache_write_5m_tokens": usage.cache_write_5m,
        "cache_write_1h_tokens": usage.cache_write_1h,
        "cache_read_input_tokens": usage.cache_read,
        "output_tokens": usage.output,
        "cost_usd": cost.total_usd if cost else None,
        "cost_input_usd": breakdown["input"] if breakdown else None,
        "cost_cache_write_5m_usd": breakdown["cache_write_5m"] if breakdown else None,
        "cost_cache_write_1h_usd": breakdown["cache_write_1h"] if breakdown else None,
        "cost_cache_read_usd": breakdown["cache_read"] if breakdown else None,
        "cost_output_usd": breakdown["output"] if breakdown else None,
        "cost_web_search_usd": breakdown["web_search"] if breakdown else None,
        "warm_cache_cost_usd": _warm_cache_cost(cost, usage),
        # unpriced: a model the table does not know and could not estimate (an estimate has a cost)
        "unknown_model": int(bool(cost and cost.unknown_model and not cost.estimated_from)),
        "price_estimated_from": cost.estimated_from if cost else None,
        "price_table_date": cost.price_table_date if cost else None,
        "request_chars": call.attribution.total_chars,
        "ttfb_ms": x.ttfb_ms,
        "duration_ms": x.duration_ms,
        "cache_previous_capture_id": previous.capture_id if previous else None,
        "cache_gap_s": previous.gap_s if previous else None,
        "cache_break_cause": found.cause if found else None,
        "cache_break_causes": (",".join(found.causes) or None) if found else None,
        "cache_break_bucket": found.where.bucket if found and found.where else None,
        "cache_break_item": found.item if found else None,
        "cache_break_tokens": found.lost_tokens if found else 0,
        "cache_break_usd": found.extra_cost_usd if found else None,
        **_repricing(usage),
        "history_read_tokens": facts.history_read,
        "messages_read_tokens": facts.messages_read,
    }


def _repricing(usage: Usage) -> dict[str, Any]:
    """What pricing reads from a usage besides its token counts: fast mode, the inference region,
    and the billed iterations (as JSON), each None when the usage has none."""
    original = usage.original
    iterations = original.get("iterations")
    return {
        "speed": original["speed"] if isinstance(original.get("speed"), str) else None,
        "inference_geo": original["inference_geo"] if isinstance(original.get("inference_geo"), str) else None,
        "usage_iterations": json.dumps(iterations, separators=(",", ":")) if isinstance(iterations, list) and iterations
        else None,
    }


NO_USAGE = Usage(input=0, cache_write_5m=0, cache_write_1h=0, cache_read=0, output=0, prompt_tokens=0, original={})


def _warm_cache_cost(cost: Cost | None, usage: Usage) -> float | None:
    """What the call would have cost had every token it wrote to the cache been read from it."""
    if cost is None or cost.total_usd is None or not cost.breakdown or not cost.rates or "cache_read" not in cost.rates:
        return None
    write_cost = cost.breakdown["cache_write_5m"] + cost.breakdown["cache_write_1h"]
    return cost.total_usd - write_cost + usage.cache_write * cost.rates["cache_read"] / _MTOK


def _details(call: CallRecord) -> list[Detail]:
    """Each request bucket, and each labelled part of it, with its share of the input side; then
    the output, all of it and by kind; then the search fees."""
    usage, cost = call.usage or NO_USAGE, call.cost
    out = _request_details(call, usage.input_side, cost.input_side_usd if cost else None)
    out += _output_details(call, usage.output, cost.output_usd if cost else None)
    if cost and cost.web_search_usd:
        out.append(Detail(WEB_SEARCH, "", 0, 0.0, cost.web_search_usd))
    return out


def _request_details(call: CallRecord, prompt: int, input_usd: float | None) -> list[Detail]:
    attribution = call.attribution
    total = sum(attribution.buckets.values())
    out = []

    def detail(bucket: str, label: str, chars: int) -> Detail:
        share = chars / total
        return Detail(bucket, label, chars, prompt * share, None if input_usd is None else input_usd * share)

    for bucket, chars in attribution.buckets.items():
        if not chars:
            continue
        out.append(detail(bucket, "", chars))
        if bucket not in UNLABELLED_BUCKETS:
            for label, n in (attribution.by_label.get(bucket) or {}).items():
                if n:
                    out.append(detail(bucket, label, n))
    return out


def _output_details(call: CallRecord, output_tokens: int, output_usd: float | None) -> list[Detail]:
    split = call.output.items()
    total = sum(n for _, n in split)
    if not output_tokens and not total:
        return []
    out = [Detail(OUTPUT, "", total, float(output_tokens), output_usd)]
    for label, n in split:
        if n:
            share = n / total
            usd = None if output_usd is None else output_usd * share
            out.append(Detail(OUTPUT, label, n, output_tokens * share, usd))
    return out


def _rate_limits(call: CallRecord) -> tuple[tuple, ...]:
    """A row of `schema.RATE_LIMIT_COLUMNS` per window its response carried."""
    windows = call.rate_limits.windows if call.rate_limits else ()
    return tuple((w.name, w.source, w.utilization, w.resets_at, w.status, w.surpassed_threshold, w.limit, w.remaining)
                 for w in windows)
