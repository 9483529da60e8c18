"""Issue 12, item 7: the daemon starts on a full or read-only disk, says so, and catches up after.

The wire comes up and serves calls; `ports.json`, `state.json` and the viewer token wait in memory;
`status` (which then finds the daemon through the admin port in `ports.json`) says what is
degraded and why; no temporary file is left; once the disk takes writes again the state is
written. Real disks: a tmpfs that fills up or is remounted read-only (needs root, else skipped);
and the same in process, without root, with every write failing ENOSPC.
"""

import errno
import http.client
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opik_cipx import home as home_module
from opik_cipx.config import load_settings
from opik_cipx.daemon import Daemon
from tests.conftest import REPO, DaemonProcess, ReservedPort, cli_env, run_command, wait_for
from tests.fake_anthropic import CA_BUNDLE, FakeAnthropic


@pytest.fixture(scope="module")
def first_install(tmp_path_factory) -> Path:
    """A home as a normal first start leaves it (ports.json, viewer.token, the ledger, the logs...),
    then a clean stop: made once for the module; each test copies it onto its own disk
    (`installed_on`) and never changes it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs (the tests of this module that use it)")
    with FakeAnthropic(tls=True) as upstream:
        home = tmp_path_factory.mktemp("first-install") / "home"
        daemon = DaemonProcess(home, upstream.url)
        assert daemon.stop() == 0
    return home


def installed_on(disk: Path, first_install: Path, ports: list[ReservedPort]) -> Path:
    """A copy of `first_install` on `disk`, its picked ports those held for this test (as if the first
    start had got them), so no other process can have taken them since."""
    home = disk / "home"
    shutil.copytree(first_install, home, symlinks=True)
    saved = json.loads((home / "ports.json").read_text())
    assert set(saved) == {"claude_code", "admin", "viewer"}
    (home / "ports.json").write_text(json.dumps({**saved, "admin": ports[0].port, "viewer": ports[1].port}))
    return home


def start_degraded(home: Path, upstream_url: str, port: int = 0) -> subprocess.Popen:
    """`opik-cipx proxy` where state.json cannot be written (so no DaemonProcess: it waits for that file)."""
    env = cli_env(home, CIPX_UPSTREAM_URL=upstream_url, CIPX_CA_BUNDLE=CA_BUNDLE)
    proc = subprocess.Popen([sys.executable, "-m", "opik_cipx", "proxy", "--port", str(port)], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    return proc


def call_through(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/messages", body=b'{"model":"m"}', headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def running_status(home: Path) -> dict | None:
    result = run_command(home, "status", "--json")
    doc = json.loads(result.stdout) if result.stdout.strip() else {}
    return doc if doc.get("pid") else None


@pytest.mark.parametrize("bad_day", ["full", "read-only"])
def test_the_daemon_starts_serves_and_reports_on_a_disk_that_refuses_writes(tmpfs, upstream, bad_day, first_install):
    ports = [ReservedPort(), ReservedPort()]
    home = installed_on(tmpfs.path, first_install, ports)
    (home / "viewer.token").unlink()  # so the token, too, has to wait in memory
    filler = tmpfs.fill() if bad_day == "full" else None
    if bad_day == "read-only":
        tmpfs.remount("ro")
    proc = start_degraded(home, upstream.url)
    try:
        doc = wait_for(lambda: proc.poll() is None and running_status(home), what="daemon found through ports.json")
        assert doc["pid"] == proc.pid
        assert doc["home"]["degraded"] is True
        assert {"state.json", "viewer.token"} <= set(doc["home"]["unsaved"])
        reason = "No space left on device" if bad_day == "full" else "Read-only file system"
        assert any(reason in problem for problem in doc["home"]["problems"]), doc["home"]
        assert str(home) not in json.dumps(doc["home"])  # names relative to the home, no paths

        port = int(doc["listeners"]["claude_code"].rsplit(":", 1)[1])
        assert call_through(port) == 200  # the wire works
        assert upstream.seen

        text = run_command(home, "status").stdout
        assert "degraded: the disk under CIPX_HOME refuses writes" in text and reason in text
        assert not (home / "state.json").exists() and not (home / "viewer.token").exists()
        assert not [p for p in home.rglob("*") if p.name.endswith(".tmp")]  # no temp file left behind

        if filler:
            filler.unlink()
        else:
            tmpfs.remount("rw")
        wait_for(lambda: (home / "state.json").exists() and (home / "viewer.token").exists(), what="state written")
        assert json.loads((home / "state.json").read_text())["pid"] == proc.pid
        assert wait_for(lambda: (d := running_status(home)) and not d["home"]["degraded"] and d)
        assert not [p for p in home.rglob("*") if p.name.endswith(".tmp")]
    finally:
        if bad_day == "read-only":
            subprocess.run(["mount", "-o", "remount,rw", str(tmpfs.path)], capture_output=True)
        proc.terminate()
        _, stderr = proc.communicate(timeout=30)
        for held in ports:
            held.close()
    assert proc.returncode == 0
    assert b"Traceback" not in stderr and b"Logging error" not in stderr


def test_a_fresh_home_on_a_read_only_disk_still_brings_the_wire_up(tmpfs, upstream, reserved_port):
    home = tmpfs.path / "home"
    home.mkdir(mode=0o700)
    tmpfs.remount("ro")
    port = reserved_port  # no ports.json can tell it: the disk refuses it
    proc = start_degraded(home, upstream.url, port)
    try:
        line = wait_for(lambda: proc.stderr.readline(), what="startup warning on stderr")
        assert b"logging to stderr" in line  # logs/ cannot even be created
        assert wait_for(lambda: b"kept in memory" in proc.stderr.readline(), what="state kept in memory")
        assert call_through(port) == 200
        status = run_command(home, "status")
        assert status.returncode == 0 and "is on a read-only file system" in status.stdout
        assert list(home.iterdir()) == []
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs.path)], capture_output=True)
        proc.terminate()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_in_process_a_disk_that_refuses_every_write_still_brings_the_wire_up(tmp_path, upstream, monkeypatch):
    """The same without root: every atomic write fails with ENOSPC until the disk "recovers"."""
    home = tmp_path / "home"
    settings = load_settings({"CIPX_HOME": str(home), "HOME": str(tmp_path), "CIPX_UPSTREAM_URL": upstream.url,
                              "CIPX_CA_BUNDLE": CA_BUNDLE, "CIPX_CONFIG": os.devnull})

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(home_module.os, "fsync", no_space)
    daemon = Daemon(settings, port=0)
    daemon.start()
    try:
        assert call_through(daemon.gateway_server.port) == 200
        section = daemon.stats()["home"]
        assert section["degraded"] and set(section["unsaved"]) == {"ports.json", "state.json", "viewer.token"}
        assert "No space left on device" in section["problems"][0]
        assert not [p for p in home.rglob("*") if p.name.endswith(".tmp")]
        monkeypatch.undo()
        daemon.tick()
        assert json.loads((home / "state.json").read_text())["ports"] == daemon.ports
        assert (home / "viewer.token").exists() and (home / "ports.json").exists()
        assert daemon.stats()["home"] == {"degraded": False, "unsaved": [], "problems": [], "layout": []}
    finally:
        daemon.shutdown()
