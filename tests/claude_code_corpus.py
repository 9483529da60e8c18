"""The recorded Claude Code 2.1.197 requests (tests/fixtures/claude-code), for golden tests."""

import json
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"
SCENARIOS = (
    "simple",
    "tools",
    "subagent",
    "mcp",
    "skills_agents",
    "compact",
    "nonstream_and_others",
    "error",
)


@cache
def request(scenario: str, number: str) -> dict:
    """One recorded request: {method, path, headers (dict), body (str), ...}."""
    return json.loads((FIXTURES / scenario / f"{number}.json").read_text())


def requests(scenario: str) -> list[tuple[str, dict]]:
    """(number, request) for every request of a scenario, in recorded order."""
    paths = sorted(path for path in (FIXTURES / scenario).glob("[0-9][0-9][0-9].json"))
    return [(path.stem, request(scenario, path.stem)) for path in paths]


def messages_requests() -> list[tuple[str, str, dict]]:
    """(scenario, number, request) for every Messages API request (incl. count_tokens)."""
    return [
        (scenario, number, req)
        for scenario in SCENARIOS
        for number, req in requests(scenario)
        if req["path"].startswith("/v1/messages")
    ]


def header_pairs(req: dict) -> list[list[str]]:
    """Headers as the Capture holds them: [name, value] pairs."""
    return [[name, value] for name, value in req["headers"].items()]


def body_bytes(req: dict) -> bytes:
    return req["body"].encode("utf-8")


def body_json(req: dict) -> dict | None:
    try:
        return json.loads(req["body"]) if req.get("body") else None
    except ValueError:
        return None
