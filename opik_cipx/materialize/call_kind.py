"""What kind of Claude Code call an exchange is, from its method, path, headers and body.

Kinds: `main` (the agent loop), `subagent`, `compaction`, `side` (a helper call: web search,
web fetch, title generation, quota probe, or `unknown`), `count_tokens` (`/context`),
`preconnect` (`HEAD`), `other` (any non-model route), and `blocked`: a model call a spend cap
kept from Anthropic (the gateway marked its capture; `side_kind` names the cap, `day`,
`session`, `project_week`, ...: docs/BUDGETS.md), whatever kind it would have been.

Markers, strongest first (Claude Code 2.1.197 traffic, tests/fixtures/claude-code/README.md):
- compaction: the last user message holds `Your task is to create a detailed summary of the
  conversation so far` (older builds: a system prompt `You are a helpful AI assistant tasked
  with summarizing conversations`). A compacting subagent is `compaction` with `subagent` set.
- subagent: header `x-claude-code-agent-id`, else billing header `cc_is_subagent=true`, else a
  system block starting `You are an agent for Claude Code`.
- main: the main prompt `You are an interactive agent that helps users`, or a
  `context_management` parameter (only the main loop sends one).
- side calls, recognised by their own prompt:
  - web_search: a `web_search_*` server tool, or the system prompt `You are an assistant for
    performing a web search tool use`.
  - web_fetch: user text `Web page content:\\n---` (the fetched page, then the question).
  - quota_probe: `max_tokens: 1` and a single user message `quota`.
  - title: no tools, and a system prompt about a title for the session or conversation, or a
    JSON output schema whose only property is `title` (not in the recorded corpus; phrasing
    seen in public captures: "sentence-case title for this coding session", "naming a coding
    session", "succinct title").
  Anything else without a main or subagent marker is `side` / `unknown`.
"""

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import TypedDict

from opik_cipx.materialize.attribution.compaction import SUMMARY_PROMPT
from opik_cipx.materialize.attribution.system import BILLING_HEADER, SUBAGENT_FLAG
from opik_cipx.wire.capture import header_value

MAIN_PROMPT = "You are an interactive agent that helps users"
SUBAGENT_PROMPT = "You are an agent for Claude Code"
LEGACY_COMPACT_PROMPT = "You are a helpful AI assistant tasked with summarizing conversations"
WEB_SEARCH_PROMPT = "You are an assistant for performing a web search tool use"
WEB_FETCH_TEXT = "Web page content:\n---"
_TITLE = re.compile(r"\btitle\b", re.I)
_TITLE_SUBJECT = re.compile(r"\b(?:coding session|session|conversation)\b", re.I)
_LEGACY_SESSION = re.compile(r"_session_([0-9a-fA-F-]{36})")


@dataclass(frozen=True)
class CallKind:
    kind: str  # main | subagent | compaction | side | count_tokens | preconnect | other | blocked
    side_kind: str | None = None  # web_search | web_fetch | title | quota_probe | unknown; blocked: the cap
    subagent: bool = False
    agent_id: str | None = None
    parent_agent_id: str | None = None
    session_id: str | None = None
    retry_count: int | None = None


class _Ids(TypedDict):
    """The fields of a `CallKind` that every kind has: from the headers and the request metadata."""

    agent_id: str | None
    parent_agent_id: str | None
    session_id: str | None
    retry_count: int | None


def classify(method: str, path: str, headers: list[list[str]], body: dict | None,
             blocked: str | None = None) -> CallKind:
    """The kind of one exchange; `body` is the parsed request JSON (None if it was not JSON);
    `blocked` the cap that kept it from Anthropic (`Capture.blocked`)."""
    body = body if isinstance(body, dict) else None
    agent_id = header_value(headers, "x-claude-code-agent-id") or None
    ids: _Ids = {
        "agent_id": agent_id,
        "parent_agent_id": header_value(headers, "x-claude-code-parent-agent-id") or None,
        "session_id": header_value(headers, "x-claude-code-session-id") or _metadata_session(body),
        "retry_count": _int(header_value(headers, "x-stainless-retry-count")),
    }
    route = _route(path)
    if blocked is not None:
        return CallKind("blocked", side_kind=blocked, subagent=agent_id is not None, **ids)
    if method.upper() == "HEAD":
        return CallKind("preconnect", **ids)
    if route.endswith("/v1/messages/count_tokens"):
        return CallKind("count_tokens", **ids)
    if method.upper() != "POST" or not route.endswith("/v1/messages") or body is None:
        return CallKind("other", **ids)
    system = _system_texts(body)
    subagent = agent_id is not None or any(
        (text.startswith(BILLING_HEADER) and SUBAGENT_FLAG in text) or text.startswith(SUBAGENT_PROMPT)
        for text in system
    )
    if _compacting(body, system):
        return CallKind("compaction", subagent=subagent, **ids)
    if subagent:
        return CallKind("subagent", subagent=True, **ids)
    if any(MAIN_PROMPT in text for text in system) or "context_management" in body:
        return CallKind("main", **ids)
    return CallKind("side", side_kind=_side_kind(body, system), **ids)


def _side_kind(body: dict, system: list[str]) -> str:
    tools = found if isinstance(found := body.get("tools"), list) else []
    tool_types = [tool.get("type") for tool in tools if isinstance(tool, dict)]
    if any(isinstance(kind, str) and kind.startswith("web_search") for kind in tool_types) or any(
        WEB_SEARCH_PROMPT in text for text in system
    ):
        return "web_search"
    messages = _messages(body)
    user_texts = [text for message in messages if message.get("role") == "user" for text in _texts(message)]
    if any(WEB_FETCH_TEXT in text for text in user_texts):
        return "web_fetch"
    if body.get("max_tokens") == 1 and len(messages) == 1 and [t.strip() for t in user_texts] == ["quota"]:
        return "quota_probe"
    prompt = "\n".join(text for text in system if not text.startswith(BILLING_HEADER))
    if not tools and (_TITLE.search(prompt) and _TITLE_SUBJECT.search(prompt) or _title_schema(body)):
        return "title"
    return "unknown"


def _compacting(body: dict, system: list[str]) -> bool:
    if any(text.startswith(LEGACY_COMPACT_PROMPT) for text in system):
        return True
    users = [message for message in _messages(body) if message.get("role") == "user"]
    return bool(users) and any(SUMMARY_PROMPT in text for text in _texts(users[-1]))


def _title_schema(body: dict) -> bool:
    """A structured-output request whose JSON schema has `title` as its only property."""
    for key in ("output_config", "output_format"):
        config = body.get(key)
        if isinstance(config, dict) and isinstance(config.get("format"), dict):
            config = config["format"]
        schema = config.get("schema") if isinstance(config, dict) else None
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if isinstance(properties, dict) and list(properties) == ["title"]:
            return True
    return False


def _system_texts(body: dict) -> list[str]:
    system = body.get("system")
    if isinstance(system, str):
        return [system]
    if isinstance(system, list):
        texts = [block.get("text") for block in system if isinstance(block, dict)]
        return [text for text in texts if isinstance(text, str)]
    return []


def _messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    return [message for message in messages if isinstance(message, dict)]


def _texts(message: dict) -> list[str]:
    content = message.get("content")
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        blocks = [block for block in content if isinstance(block, dict) and block.get("type") == "text"]
        return [block["text"] for block in blocks if isinstance(block.get("text"), str)]
    return []


def _metadata_session(body: dict | None) -> str | None:
    """`session_id` from `metadata.user_id`: a JSON object today, `..._session_<uuid>` before."""
    metadata = body.get("metadata") if body else None
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if not isinstance(user_id, str):
        return None
    try:
        parsed = json.loads(user_id)
    except ValueError:
        legacy = _LEGACY_SESSION.search(user_id)
        return legacy.group(1) if legacy else None
    session = parsed.get("session_id") if isinstance(parsed, dict) else None
    return session if isinstance(session, str) and session else None


def _route(path: str) -> str:
    """The path without query; an absolute-form target (sent through a proxy) loses its origin."""
    if "://" in path:
        path = urllib.parse.urlsplit(path).path
    return path.split("?", 1)[0]


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
