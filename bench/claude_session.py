"""A long Claude Code session for benchmarks, grown from the recorded corpus.

The recorded sessions are short (bodies of about 80 KB). A late-session request is the same
request with many more messages: `growing_session` starts from a real main-loop request
(`tools/006`) and appends, per call, a real assistant turn of the corpus (thinking, text,
tool_use, with a fresh tool id) and a tool_result holding real Claude Code text (its system prompt
and tool descriptions, cycled), moving the cache_control marker to the newest message as Claude
Code does. The answer of every call is the recorded SSE stream of `tools/006`.
"""

import copy
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opik_cipx.ids import derived_uuid7  # noqa: E402
from opik_cipx.wire.capture import Capture  # noqa: E402
from tests.claude_code_corpus import body_json, header_pairs, request, response  # noqa: E402

BASE = ("tools", "006")


def _assistant_turns(base: dict) -> list[dict]:
    return [m for m in base["messages"] if m["role"] == "assistant"
            and any(block.get("type") == "tool_use" for block in m["content"])]


def _filler(base: dict) -> str:
    """Real Claude Code text: the system prompt blocks and tool descriptions of the base request."""
    parts = [block["text"] for block in base["system"]] + [tool.get("description", "") for tool in base["tools"]]
    return "\n".join(parts)


def _unmarked(value):
    if isinstance(value, dict):
        return {k: _unmarked(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(v) for v in value]
    return value


def growing_session(calls: int, growth: float) -> list[bytes]:
    """`calls` request bodies of one session; the last is about `growth` times the first."""
    base = body_json(request(*BASE))
    turns = _assistant_turns(base)
    filler = _filler(base)
    first = len(json.dumps(base, ensure_ascii=False, separators=(",", ":")).encode())
    per_call = max(1, int(first * (growth - 1) / max(1, calls - 1)))
    messages = _unmarked(base["messages"])
    bodies, offset = [], 0
    for call in range(calls):
        if call:
            turn = copy.deepcopy(turns[call % len(turns)])
            ids = []
            for block in turn["content"]:
                if block.get("type") == "tool_use":
                    block["id"] = f"toolu_bench_{call}_{len(ids)}"
                    ids.append(block["id"])
            size = per_call - len(json.dumps(turn, ensure_ascii=False))
            results = []
            for tool_id in ids:
                text = (filler * (1 + size // len(filler) + 1))[offset % len(filler):][: max(1, size // len(ids))]
                offset += 7919
                results.append({"type": "tool_result", "tool_use_id": tool_id, "content": text})
            messages = messages + [turn, {"role": "user", "content": results}]
        sent = copy.deepcopy(messages[-1])
        sent["content"][-1]["cache_control"] = {"type": "ephemeral"}
        bodies.append(json.dumps(dict(base, messages=messages[:-1] + [sent]), ensure_ascii=False,
                                 separators=(",", ":")).encode())
    return bodies


def session_headers() -> list[list[str]]:
    """The recorded request headers of the base request (session id, user agent, ...)."""
    return [[name, value] for name, value in header_pairs(request(*BASE)) if name.lower() != "content-length"]


def sse_answer() -> tuple[list[list[str]], bytes]:
    """The recorded response headers and SSE body every call of the session is answered with."""
    recorded = response(*BASE)
    return [[name, value] for name, value in recorded["headers"].items()], recorded["body"].encode()


def captures(bodies: list[bytes], start_ns: int = 1_780_000_000_000_000_000) -> list[Capture]:
    """The session as the gateway would capture it, a call every 20 seconds."""
    headers, answer = sse_answer()
    out = []
    for index, body in enumerate(bodies):
        started = start_ns + index * 20_000_000_000
        capture = Capture(
            id=derived_uuid7(started // 1_000_000, "bench", str(index)),
            started_at_ns=started,
            ttfb_ns=started + 40_000_000,
            ended_at_ns=started + 900_000_000,
            method="POST",
            path="/v1/messages?beta=true",
            request_headers=session_headers() + [["content-length", str(len(body))]],
            request_body=body,
            status=200,
            response_headers=headers,
        )
        capture.response_parts = [answer]
        out.append(capture)
    return out
