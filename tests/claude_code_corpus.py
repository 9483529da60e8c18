"""The recorded Claude Code 2.1.197 requests (tests/fixtures/claude-code), for golden tests."""

import hashlib
import json
import re
from functools import cache
from pathlib import Path
from typing import NamedTuple

from opik_cipx.ids import derived_uuid7
from opik_cipx.materialize.call import Materialized
from opik_cipx.wire.capture import Capture

FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"
FIXTURES_5X = Path(__file__).parent / "fixtures" / "claude-code-5x"  # derived from FIXTURES: see its README
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
def request(scenario: str, number: str, root: Path = FIXTURES) -> dict:
    """One recorded request: {method, path, headers (dict), body (str), ...}."""
    return json.loads((root / scenario / f"{number}.json").read_text())


def requests(scenario: str, root: Path = FIXTURES) -> list[tuple[str, dict]]:
    """(number, request) for every request of a scenario, in recorded order."""
    paths = sorted(path for path in (root / scenario).glob("[0-9][0-9][0-9].json"))
    return [(path.stem, request(scenario, path.stem, root)) for path in paths]


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


@cache
def response(scenario: str, number: str, root: Path = FIXTURES) -> dict:
    """What the recording's fake upstream answered: {status, headers (dict), body (str)}."""
    return json.loads((root / scenario / f"{number}.response.json").read_text())


def exchange(scenario: str, number: str, root: Path = FIXTURES) -> Capture:
    """One recorded exchange as the gateway would have captured it (times from the recording)."""
    req, resp = request(scenario, number, root), response(scenario, number, root)
    started = int(req["received_at"] * 1e9)
    capture = Capture(
        id=derived_uuid7(started // 1_000_000, "fixture", scenario, number),
        started_at_ns=started,
        ttfb_ns=started + 40_000_000,
        ended_at_ns=started + 200_000_000,
        method=req["method"],
        path=req["path"],
        request_headers=header_pairs(req),
        request_body=body_bytes(req),
        status=resp["status"],
        response_headers=[[name, value] for name, value in resp["headers"].items()],
    )
    capture.response_parts = [resp["body"].encode("utf-8")]
    return capture


def exchanges(scenario: str, root: Path = FIXTURES) -> list[tuple[str, Capture]]:
    """(number, capture) for every recorded exchange of a scenario, in recorded order."""
    return [(number, exchange(scenario, number, root)) for number, _ in requests(scenario, root)]


def runs(scenario: str) -> dict[str, int]:
    """Request number -> the CLI invocation (1-based `cli_runN`) that sent it, from `_server.log`."""
    out, run = {}, 0
    for line in (FIXTURES / scenario / "_server.log").read_text().splitlines():
        if line.startswith("=== run "):
            run = int(line.split()[2].rstrip(":"))
        elif match := re.match(r"^\S+ #(\d{3}) ", line):
            out[match.group(1)] = run
    return out


def cli_result(scenario: str, run: int) -> dict:
    """Claude Code's own `--output-format json` result of one invocation (its cost included)."""
    return json.loads((FIXTURES / scenario / f"cli_run{run}.stdout.json").read_text())


def write_session_files(sessions_dir: Path) -> dict[str, dict]:
    """`sessions/<id>.json` for every recorded session, as `sync` writes them from the
    recorded SessionStart hooks (git remote and branch made up per project, one made-up
    account); id -> file."""
    sessions_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for hook in sorted(FIXTURES.glob("*/hook_SessionStart_*.json")):
        doc = json.loads(hook.read_text())
        project = doc["cwd"].rsplit("/", 1)[-1]
        branch = "main" if hook.parent.name in ("simple", "tools", "mcp", "compact") else f"feat/{hook.parent.name}"
        info = {
            **doc,
            "git": {"remote": f"https://github.com/acme/{project}.git", "branch": branch, "commit": "0" * 40},
            "identity": {"user_email": "dev@acme.test", "user_uuid": None, "display_name": None, "org_uuid": None,
                         "org_name": "Acme"},
            "written_at": "2026-11-24T00:00:00Z",
        }
        (sessions_dir / f"{doc['session_id']}.json").write_text(json.dumps(info))
        out[doc["session_id"]] = info
    return out


@cache
def corpus_now_ns() -> int:
    """A fixed "now" one day after the last recorded exchange: the date a test of retention or
    of "today" runs at, whatever the machine's clock says."""
    return max(exchange(scenario, number).ended_at_ns
               for scenario in SCENARIOS for number, _ in requests(scenario)) + 86400 * 10**9


def corpus_clock():
    """A `tests.fake_clock.FakeClock` at `corpus_now_ns()`."""
    from tests.fake_clock import FakeClock

    return FakeClock(corpus_now_ns())


class Derived(NamedTuple):
    """One recorded exchange and what the materializer made of it: `result.records`, `result.call`."""

    scenario: str
    number: str
    capture: Capture
    result: Materialized


def materialized(sessions_dir: Path, recent: bool = False) -> list[Derived]:
    """Every recorded exchange, in recorded order, through one materializer as the daemon runs it,
    with the session files of `write_session_files` (also written to `sessions_dir`). Shared by
    every caller in the test process (`corpus`): read-only, and checked to be unchanged. `recent`:
    a fresh copy with every exchange moved in time (keeping their spacing) so that the last ended
    a minute ago."""
    write_session_files(sessions_dir)
    if recent:
        return list(_materialize(recent=True))
    if _fingerprint(corpus()) != _corpus_fingerprint():
        raise AssertionError("a test changed the shared corpus records (tests/claude_code_corpus.corpus): "
                             "copy them before changing them")
    return list(corpus())


@cache
def corpus() -> tuple[Derived, ...]:
    """The recorded corpus materialized once per test process (see `materialized`): read-only."""
    return _materialize(recent=False)


@cache
def _corpus_fingerprint() -> str:
    return _fingerprint(corpus())


def _fingerprint(items: tuple[Derived, ...]) -> str:
    text = json.dumps([item.result.records for item in items], ensure_ascii=False)  # 30 ms
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _materialize(recent: bool) -> tuple[Derived, ...]:
    import tempfile
    import time

    from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
    from opik_cipx.materialize.pricing import load_price_table

    pairs = [(scenario, number, capture) for scenario in SCENARIOS for number, capture in exchanges(scenario)]
    if recent:
        shift = time.time_ns() - 60 * 10**9 - max(c.ended_at_ns for _, _, c in pairs)
        for _, _, capture in pairs:
            capture.started_at_ns += shift
            capture.ttfb_ns += shift
            capture.ended_at_ns += shift
    with tempfile.TemporaryDirectory() as tmp:
        sessions_dir = Path(tmp)
        write_session_files(sessions_dir)
        config = MaterializerConfig("claude-code", True, 500_000, sessions_dir, sessions_dir / "no-claude.json")
        materializer = Materializer(config, load_price_table())
        return tuple(Derived(scenario, number, capture, materializer.materialize(capture))
                     for scenario, number, capture in pairs)
