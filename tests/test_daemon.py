"""`opik-cipx proxy` as a process: startup, state files, admin listener, signals, refusals."""

import http.client
import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from opik_cipx.views.access import read_token
from tests.conftest import REPO, DaemonProcess, load_fixture, run_cli, run_command, wait_for
from tests.fake_anthropic import FakeAnthropic, fixture_reply, split_sse, sse_reply

CONTRACT_3 = {
    "pid", "version", "started_at", "uptime_s", "listeners", "project", "opik", "queue", "wal",
    "counters", "materializer", "telemetry", "home",
}
COUNTERS = {
    "requests_captured", "events_materialized", "spans_shipped", "materializer_errors_total",
    "raw_captures_dropped", "requests_dropped_queue_full", "captures_dropped_budget", "spans_dropped_term",
    "unknown_endpoints", "panics_recovered", "ledger_write_errors", "ledger_calls_dropped", "ledger_values_clamped",
    "calls_flagged", "requests_refused", "connections_refused", "requests_timed_out", "responses_truncated",
    "connections_not_owner",
}


def wait_for_listener_closed(port: int) -> None:
    def refused() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except (ConnectionRefusedError, ConnectionResetError):
            return True  # reset: the listener closed while our connection sat in its backlog
        return False

    wait_for(refused, what=f"listener on port {port} closed")


def admin_get(port: int, path: str, host: str | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("GET", path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    resp = conn.getresponse()
    return resp.status, json.loads(resp.read())


@pytest.fixture(scope="module")
def idle_daemon(tmp_path_factory):
    """One daemon for the tests of this module that only look at it: its files, its admin
    listener's answers, a second `proxy` refused on its home. None of them sends it a call, stops,
    kills, reconfigures or breaks it, so each finds it as a fresh daemon is (no capture, nothing
    written since it started), whichever of them run, in any order, on any worker. A test that
    sends calls, signals or stops a daemon starts its own."""
    with FakeAnthropic(tls=True) as upstream:
        daemon = DaemonProcess(tmp_path_factory.mktemp("idle-daemon") / "cipx-home", upstream.url)
        try:
            yield daemon
        finally:
            try:
                daemon.stop()
            finally:
                daemon.kill()


def test_stats_document_has_every_contract_field(daemon, upstream):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=5)
    conn.request("POST", "/v1/messages", body=b"{}")
    conn.getresponse().read()
    stats = wait_for(lambda: (s := daemon.stats())["counters"]["requests_captured"] == 1 and s, what="capture counted")
    assert CONTRACT_3 <= set(stats)
    assert set(stats["counters"]) == COUNTERS
    assert stats["pid"] == daemon.proc.pid
    assert stats["listeners"]["claude_code"] == f"127.0.0.1:{daemon.port}"
    assert stats["listeners"]["admin"] == f"127.0.0.1:{daemon.admin_port}"
    assert stats["started_at"].endswith("Z")
    assert set(stats["wal"]) >= {"hot_bytes", "segments", "last_sync_at", "degraded", "last_write_error",
                                 "dropped_events_inmem", "dropped_events_disk"}
    assert set(stats["materializer"]) == {"lag_events", "inflight_raw", "ready_raw"}
    assert stats["unknown_models"] == {"calls": 0, "ids": []}
    assert stats["home"] == {"degraded": False, "unsaved": [], "problems": [], "layout": []}
    assert stats["telemetry"]["enabled"] is False
    assert admin_get(daemon.admin_port, "/admin/health") == (200, {"ok": True})


def test_admin_refuses_non_loopback_host_header(idle_daemon):
    daemon = idle_daemon
    assert admin_get(daemon.admin_port, "/admin/health", host="evil.example:80")[0] == 403
    assert admin_get(daemon.admin_port, "/admin/stats", host="127.0.0.1.nip.io")[0] == 403
    assert admin_get(daemon.admin_port, "/admin/stats", host=f"localhost:{daemon.admin_port}")[0] == 200
    assert admin_get(daemon.admin_port, "/admin/stats", host="[::1]")[0] == 200


def test_state_files_are_private_and_state_json_is_the_handshake(idle_daemon):
    """What a running daemon has written (a clean stop removing state.json:
    test_a_stop_with_an_idle_keepalive_client_is_prompt_clean_and_logs_no_bodies)."""
    daemon = idle_daemon
    home = daemon.home
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("state.json", "ports.json", "viewer.token", "logs/cipx.log"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert stat.S_IMODE((home / "logs").stat().st_mode) == 0o700
    state = json.loads((home / "state.json").read_text())
    assert state["pid"] == daemon.proc.pid
    assert set(state) >= {"pid", "started_at", "ports", "version", "home"}
    assert state["settings"] and state["settings_key"]  # for `sync`, in this owner-only file alone
    public = {key: value for key, value in state.items() if key not in ("settings", "settings_key")}
    assert admin_get(daemon.admin_port, "/admin/state") == (200, public)
    ports = json.loads((home / "ports.json").read_text())
    assert ports["claude_code"] == 9909  # `--port 0` is a per-run override, never persisted
    assert ports["admin"] == daemon.admin_port  # the port it picked, recorded for the next start
    token = read_token(home)  # the viewer's, made at the first start (kept: tests/views/test_access.py)
    assert token and len(token) >= 43


def test_picked_ports_are_kept_across_restarts(home, upstream, reserved_port):
    """The next start listens on the ports the last one recorded (recording them:
    test_state_files_are_private_and_state_json_is_the_handshake), set up here on disk."""
    home.mkdir(parents=True, mode=0o700)
    (home / "ports.json").write_text(json.dumps({"claude_code": 9909, "admin": reserved_port}))
    daemon = DaemonProcess(home, upstream.url)
    try:
        assert daemon.admin_port == reserved_port
        assert json.loads((home / "ports.json").read_text())["admin"] == reserved_port
    finally:
        assert daemon.stop() == 0


def snapshot(root) -> dict:
    """Every file under `root`: its bytes and modification time."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_a_second_proxy_on_the_same_home_is_refused_and_touches_nothing(idle_daemon):
    daemon = idle_daemon
    home = daemon.home
    before = snapshot(home)
    assert before["daemon.lock"][0] == f"{daemon.proc.pid}\n".encode()
    second = run_cli(home, "proxy", "--port", "0", timeout=20)
    assert second.returncode == 1
    lines = second.stderr.splitlines()
    assert len(lines) == 1 and f"pid {daemon.proc.pid}" in lines[0], second.stderr
    assert "`opik-cipx status`" in lines[0] and "`opik-cipx restart`" in lines[0]
    assert snapshot(home) == before  # state.json, ports.json, logs, spool, captures, the lock: all as they were
    status = run_command(home, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["pid"] == daemon.proc.pid
    assert daemon.stats()["home_lock"] == {"held": True, "error": None}


def test_the_lock_dies_with_its_daemon_even_on_kill_9(home, upstream):
    first = DaemonProcess(home, upstream.url)
    first.kill()
    second = DaemonProcess(home, upstream.url)
    try:  # state.json of the dead one is still there until the new one replaces it
        wait_for(lambda: json.loads((home / "state.json").read_text())["pid"] == second.proc.pid,
                 what="the new daemon's state.json")
        assert second.stats()["pid"] == second.proc.pid != first.proc.pid
        assert (home / "daemon.lock").read_text() == f"{second.proc.pid}\n"
    finally:
        assert second.stop() == 0


def test_a_lock_file_that_cannot_be_created_does_not_stop_the_daemon(home, upstream):
    home.mkdir(parents=True)
    (home / "daemon.lock").symlink_to(home / "no-such-dir" / "lock")  # unopenable, as on a full or read-only disk
    daemon = DaemonProcess(home, upstream.url)
    try:
        lock = daemon.stats()["home_lock"]
        assert lock["held"] is False and lock["error"].startswith("cannot create daemon.lock: ")
        status = run_command(home, "status")
        assert status.returncode == 0 and "! home lock not held (cannot create daemon.lock" in status.stdout
        assert "running without the home lock" in (home / "logs" / "cipx.log").read_text()
    finally:
        assert daemon.stop() == 0


def test_disabled_proxy_exits_zero_at_once_even_with_a_broken_config(home):
    home.mkdir(parents=True)
    (home / "config.toml").write_text("this is = = not toml")
    for value in ("1", "true", "YES", "on"):
        result = run_cli(home, "proxy", CIPX_DISABLED=value)  # returns on its own: nothing listens
        assert result.returncode == 0, result.stderr
    assert not (home / "state.json").exists()


def test_non_loopback_listen_address_is_refused(home, upstream):
    for host in ("0.0.0.0", "192.168.1.10", "::"):
        result = run_cli(home, "proxy", "--port", "0", CIPX_LISTEN_HOST=host, CIPX_UPSTREAM_URL=upstream.url)
        assert result.returncode == 1
        assert "refusing to listen" in result.stderr and "127.0.0.1" in result.stderr
    assert not (home / "state.json").exists()


def test_port_in_use_is_a_clear_error(home, upstream):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = run_cli(home, "proxy", "--port", str(port), CIPX_UPSTREAM_URL=upstream.url)
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_config_value_names_file_and_key(home):
    home.mkdir(parents=True)
    config = home / "config.toml"
    config.write_text('[captures]\nmax_mb = "lots"\n')
    result = run_cli(home, "proxy")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(config) in lines[0] and "captures.max_mb" in lines[0]


def test_plain_http_upstream_only_to_loopback(home):
    result = run_cli(home, "proxy", CIPX_UPSTREAM_URL="http://api.anthropic.com")
    assert result.returncode == 2
    assert "CIPX_UPSTREAM_URL" in result.stderr and "loopback" in result.stderr


def test_sigterm_lets_an_in_flight_stream_finish(daemon, upstream):
    _, response = load_fixture("tools", "001")
    held = sse_reply(split_sse(response["body"]), hold_after=2)
    upstream.script(held)
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("POST", "/v1/messages", body=b"{}")
    resp = conn.getresponse()
    first = resp.read1(65536)
    daemon.proc.send_signal(15)
    wait_for_listener_closed(daemon.port)  # stops accepting: new connections are refused
    assert daemon.proc.poll() is None  # still draining the held stream
    held.gate.set()
    assert first + resp.read() == response["body"].encode()
    assert daemon.proc.wait(15) == 0


def test_a_stop_with_an_idle_keepalive_client_is_prompt_clean_and_logs_no_bodies(daemon, upstream):
    request, response = load_fixture("simple", "001")
    upstream.script(fixture_reply(response))
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("POST", request["path"], body=request["body"].encode())
    assert conn.getresponse().read() == response["body"].encode()
    conn.request("GET", "/v1/models")
    conn.getresponse().read()  # connection stays open, idle
    # within DaemonProcess.stop's 20 s: the 30 s drain is not waited out
    assert daemon.stop() == 0, "an idle keep-alive client held the stop"
    assert not (daemon.home / "state.json").exists(), "a clean stop leaves no state.json"
    log = (daemon.home / "logs" / "cipx.log").read_text()
    assert "listening" in log
    assert "say hello" not in log and "Hello! How" not in log, "a body in the log"


def test_python_dash_m_and_version():
    result = subprocess.run([sys.executable, "-m", "opik_cipx", "--version"], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and result.stdout.startswith("opik-cipx ")
