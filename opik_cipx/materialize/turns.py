"""Conversation structure read from a Messages API request: turns and finished tool calls.

A *turn* starts with a user message that carries no `tool_result` (a typed prompt or a slash
command); every call until the next such message belongs to it, so all of them land in one
Opik trace. A tool call is *finished* when its `tool_result` is in the request: the user
message(s) after the last assistant message answer that assistant's `tool_use` blocks.
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

AGENT_TOOLS = frozenset({"Agent", "Task"})  # a call of one of these tools starts a subagent


@dataclass(frozen=True)
class TurnAnchor:
    index: int  # position in `messages` of the user message that opened the turn
    digest: str  # hash of that message's text: identifies the turn across calls


@dataclass(frozen=True)
class FinishedTool:
    tool_use_id: str
    name: str
    input: Any
    result: Any
    is_error: bool


def _blocks(message: dict) -> list:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def _is_prompt_message(message: dict) -> bool:
    if message.get("role") != "user":
        return False
    return not any(isinstance(b, dict) and b.get("type") == "tool_result" for b in _blocks(message))


def message_text(message: dict) -> str:
    """The text blocks of a message joined with newlines."""
    return "\n".join(
        b.get("text", "") for b in _blocks(message) if isinstance(b, dict) and b.get("type") == "text"
    )


def text_digest(text: str) -> str:
    """A short stable digest of a text: identifies it across calls without keeping it."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def turn_anchor(messages: list) -> TurnAnchor | None:
    """The user message that opened the current turn, or None when there is none."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, dict) and _is_prompt_message(message):
            return TurnAnchor(index, text_digest(message_text(message)))
    return None


def continues_turn(messages: list) -> bool | None:
    """Whether a main call continues its turn (its last user message carries tool results: it
    follows an answer of the turn) rather than opens it with a prompt; None without a user message."""
    if not isinstance(messages, list):
        return None
    last = next((m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None)
    return None if last is None else not _is_prompt_message(last)


def turn_key(kind: str, messages: list, capture_id: str) -> str | None:
    """The turn a call names (docs/ARCHITECTURE.md, "Spool records"): a main call the user message
    that opened it (`main:<index>:<digest>`; `call:<capture id>` when there is none), a
    compaction its request (`compaction:<count>:<digest>`: /compact is its own user action). None
    for any other call: it names no turn of its own."""
    if kind == "main":
        anchor = turn_anchor(messages)
        return f"main:{anchor.index}:{anchor.digest}" if anchor else f"call:{capture_id}"
    if kind == "compaction":
        return f"compaction:{request_digest(messages)}"
    return None


def request_digest(messages: list) -> str:
    """The digest of a request's conversation as (message count, last message's text): the same
    request sent again (a retry) gets the same one."""
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    return f"{len(messages)}:{text_digest(message_text(last))}"


def finished_tools(messages: list) -> list[FinishedTool]:
    """Tool calls of the last assistant message whose results follow it in `messages`."""
    last_assistant = next(
        (i for i in range(len(messages) - 1, -1, -1) if isinstance(messages[i], dict)
         and messages[i].get("role") == "assistant"),
        None,
    )
    if last_assistant is None:
        return []
    uses = {
        b.get("id"): b for b in _blocks(messages[last_assistant])
        if isinstance(b, dict) and b.get("type") == "tool_use"
    }
    out = []
    for message in messages[last_assistant + 1 :]:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        for block in _blocks(message):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                use = uses.get(block.get("tool_use_id"))
                if use is not None:
                    out.append(FinishedTool(
                        tool_use_id=str(block.get("tool_use_id")),
                        name=str(use.get("name", "")),
                        input=use.get("input"),
                        result=block.get("content"),
                        is_error=bool(block.get("is_error", False)),
                    ))
    return out


def result_text(content: Any) -> str:
    """A tool_result's content as text (text blocks joined; other blocks as JSON)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            else:
                parts.append(json.dumps(block, ensure_ascii=False))
        return "\n".join(parts)
    return "" if content is None else json.dumps(content, ensure_ascii=False)


def first_user_digests(messages: list) -> set[str]:
    """`text_digest` of each text block of the first user message: a subagent's brief (the
    `prompt` of the Agent call that started it) is one of them."""
    for message in messages:
        if isinstance(message, dict) and message.get("role") == "user":
            return {
                text_digest(str(b.get("text", "")).strip())
                for b in _blocks(message) if isinstance(b, dict) and b.get("type") == "text"
            }
    return set()


def turn_prompt(facts: dict) -> str:
    """What the user typed to open the turn, from a request's attribution facts: the prompt text,
    else the last slash command with its arguments; "" when neither is there."""
    text = (facts.get("user_prompt") or {}).get("text")
    if isinstance(text, str) and text.strip():
        return text
    commands = (facts.get("slash_commands") or {}).get("by_command") or []
    if commands and isinstance(commands[-1], dict) and commands[-1].get("name"):
        last = commands[-1]
        return f"/{last['name']} {last.get('args') or ''}".strip()
    return ""
