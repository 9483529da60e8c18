"""The debug viewer: list of recent calls, a request body painted by bucket, Host and token guards."""

import http.client
import json
import threading

import pytest

from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
from opik_cipx.materialize.pricing import load_price_table
from opik_cipx.store.captures import CaptureStore
from opik_cipx.views.access import ViewerAccess, cookie_name
from opik_cipx.views.viewer import RecentCalls, ViewerHandler, call_row
from opik_cipx.wire.loopback import LoopbackServer
from tests.conftest import LIMITS
from tests.claude_code_corpus import exchanges


@pytest.fixture
def viewer(tmp_path):
    store = CaptureStore(tmp_path / "captures", max_bytes=10**9, max_age_s=10**6, segment_bytes=10**7)
    config = MaterializerConfig("claude-code", True, 500_000, tmp_path / "sessions", tmp_path / "none.json")
    materializer = Materializer(config, load_price_table())
    calls = RecentCalls(limit=50)
    for _, capture in exchanges("mcp"):
        segment = store.append(capture)
        calls.add(call_row(capture, materializer.materialize(capture), segment))
    store.close()
    handler = type("H", (ViewerHandler,), {"calls": calls, "access": ViewerAccess(TOKEN)})
    server = LoopbackServer("viewer", "127.0.0.1", 0, handler, LIMITS)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server.port, calls
    server.shutdown()
    server.server_close()


TOKEN = "t" * 43


def get(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, str]:
    """GET as a browser that signed in with the token."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Host": host, "Cookie": f"{cookie_name(port)}={TOKEN}"})
    resp = conn.getresponse()
    return resp.status, resp.read().decode()


def test_index_lists_recent_calls_with_cost(viewer):
    port, calls = viewer
    status, page = get(port, "/")
    assert status == 200
    rows = calls.rows()
    assert rows[0]["started_at_ns"] >= rows[-1]["started_at_ns"]  # newest first
    main = next(r for r in rows if r.get("kind") == "main")
    assert f"/capture/{main['capture_id']}" in page
    assert f"${main['cost_usd']:.4f}" in page
    status, api = get(port, "/api/calls")
    assert json.loads(api)[0]["capture_id"] == rows[0]["capture_id"]


def test_capture_page_paints_every_character_once(viewer):
    port, calls = viewer
    row = next(r for r in calls.rows() if r.get("kind") == "main")
    status, page = get(port, f"/capture/{row['capture_id']}")
    assert status == 200
    assert "tools_mcp" in page and "weather" in page and "notes" in page
    assert page.count("<span style='background:") >= 100  # regions painted
    assert "background:#fca5a5' title='unattributed" not in page  # nothing unattributed in this call


def test_unknown_capture_and_host_guard(viewer):
    port, _ = viewer
    assert get(port, "/capture/01960000-0000-7000-8000-000000000000")[0] == 404
    assert get(port, "/", host="attacker.example")[0] == 403
    assert get(port, "/", host="localhost:1234")[0] == 200


def test_a_browser_signs_in_once_then_uses_the_cookie(viewer):
    port, _ = viewer
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/calls")
    refused = conn.getresponse()
    assert refused.status == 403 and b"opik-cipx viewer" in refused.read()
    conn.request("GET", f"/?token={TOKEN}")
    signed_in = conn.getresponse()
    assert signed_in.status == 200 and b"url=/" in signed_in.read()
    cookie = signed_in.getheader("Set-Cookie").split(";", 1)[0]
    conn.request("GET", "/api/calls", headers={"Cookie": cookie})
    listed = conn.getresponse()
    assert listed.status == 200 and json.loads(listed.read())
