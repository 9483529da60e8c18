"""Shared test helpers: the daemon as a real subprocess, polling with deadlines, fixtures."""

import gc
import http.client
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from opik_cipx.wire.connections import Limits
from tests.fake_anthropic import CA_BUNDLE, FakeAnthropic
from tests.in_process import run_in_process

# `machine` and `machine_with_upstream` for every test, never imported by name (a test's parameter
# would redefine the import).
pytest_plugins = ("tests.lifecycle_helpers",)
REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures" / "claude-code"
LIMITS = Limits(header_timeout_s=30, body_timeout_s=120, idle_timeout_s=120, max_connections=256)  # the defaults


# Hypothesis's per-example deadline (200 ms) and its too-slow health check are wall-clock bounds:
# on a loaded machine, with workers in parallel, they fail tests that are right. A test that
# states its own settings keeps them. How many examples a property tries: the suite runs half the
# count a test names (`examples`) and 50 where it names none, so the whole suite keeps to its time;
# `HYPOTHESIS_PROFILE=thorough` runs four times the named count, and 400 (docs/DEVELOPING.md).
THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=50)
settings.register_profile("thorough", settings.get_profile("suite"), max_examples=400)
settings.load_profile("thorough" if THOROUGH else "suite")


def examples(named: int) -> int:
    """The `max_examples` of a property whose test names `named`: half of it in the suite (at least
    10), four times it in a thorough run."""
    return named * 4 if THOROUGH else max(10, named // 2)

# Compiled modules of the suite's subprocesses (hundreds of daemons, commands, installs), kept in one
# cache outside the checkout: a user's interpreter compiles the package once, not at every start,
# and neither should the suite's, even where the environment says PYTHONDONTWRITEBYTECODE.
PYCACHE = Path(tempfile.gettempdir()) / f"opik-cipx-tests-pycache-{os.getuid()}"


def pytest_configure(config) -> None:
    """Before the workers start (they inherit it): subprocesses cache their compiled modules in PYCACHE."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE))


def pytest_collection_finish(session) -> None:
    """What collection built (the test modules, Hypothesis, the package) stays for the whole run:
    out of the garbage collector's passes, which otherwise walk it again and again (about 5 % of
    the in-process tests' CPU)."""
    gc.collect()
    gc.freeze()


def _ephemeral_low(default: int = 32768) -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return default


# Ports a test may ask for by number: below the range the system assigns from (to a listener bound
# to port 0, and to every outgoing connection), so nothing else on the machine takes one by chance.
RESERVABLE = range(max(1024, _ephemeral_low() - 12_000), _ephemeral_low())
_next_candidate = itertools.count(os.getpid() * 37)


class ReservedPort:
    """A loopback port held for one test, for a listener that must be on a known port (Claude Code's).

    Held by a bound, non-listening socket with SO_REUSEADDR: a daemon (which binds with it too)
    can listen on the port, while `ReservedPort` in any other process or test, which first binds
    without it, cannot take the same port. So tests running in parallel, in one suite or in
    several, never race for a port. `close()` when the test is over.
    """

    def __init__(self) -> None:
        for _ in range(len(RESERVABLE)):
            port = RESERVABLE[next(_next_candidate) % len(RESERVABLE)]
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.bind(("127.0.0.1", port))  # without SO_REUSEADDR: fails if any socket holds the port
            except OSError:
                sock.close()
                continue
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # from now on a daemon may bind it too
            self.port, self._sock = port, sock
            return
        raise RuntimeError(f"no free port in {RESERVABLE}")

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def reserved_port():
    """A port number held for this test (`ReservedPort`)."""
    held = ReservedPort()
    yield held.port
    held.close()


@pytest.fixture
def opik_down():
    """The settings of an Opik that refuses every connection (a port held, not listening): a daemon
    keeps its records in the spool, where a test can read them (without Opik it keeps none)."""
    held = ReservedPort()
    yield {"OPIK_CIPX_BASE_URL": f"http://127.0.0.1:{held.port}/api"}
    held.close()


POLL_FIRST_S, POLL_MAX_S = 0.005, 0.1


def wait_for(predicate, timeout_s: float = 10.0, what: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail the test at the deadline.

    The interval starts at 5 ms and grows by half each time up to 100 ms: a condition that holds
    soon is seen soon, and a long wait does not spend the CPU the suite's parallel tests need (a
    predicate often asks a daemon's admin listener, which works to answer).
    """
    deadline = time.monotonic() + timeout_s
    interval = POLL_FIRST_S
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval)
        interval = min(interval * 1.5, POLL_MAX_S)


def load_fixture(scenario: str, number: str) -> tuple[dict, dict]:
    """(request, response) of one recorded exchange."""
    base = FIXTURES / scenario
    return (
        json.loads((base / f"{number}.json").read_text()),
        json.loads((base / f"{number}.response.json").read_text()),
    )


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIPX_", "OPIK_"))}
    env.update({"CIPX_HOME": str(home), "HOME": str(home.parent), "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def run_cli(home: Path, *args: str, timeout: float = 30, input: str | None = None, **extra: str):
    """`python -m opik_cipx ARGS` in a subprocess: for a test about the process or the executable
    (docs/DEVELOPING.md, "Tests"); `run_command` runs the same in this process."""
    return subprocess.run(
        [sys.executable, "-m", "opik_cipx", *args],
        env=cli_env(home, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def run_command(home: Path, *args: str, input: str | None = None, cwd: Path | None = None,
                **extra: str) -> subprocess.CompletedProcess[str]:
    """`opik-cipx ARGS` in this process, in the environment `run_cli` gives its subprocess, with the
    same answer (`tests/in_process.py`): for a test about what a command prints, returns and writes."""
    return run_in_process(args, cli_env(home, **extra), input, cwd)


class DaemonProcess:
    """`opik-cipx proxy --port 0` in a subprocess, up once `state.json` appears.

    `module` runs instead of `opik_cipx` (tests/forced_errors.py plants a bug first); `popen`:
    more `subprocess.Popen` arguments (a session of its own, a terminal)."""

    def __init__(self, home: Path, upstream_url: str, module: str = "opik_cipx", popen: dict | None = None,
                 **extra: str):
        self.home = home
        env = cli_env(home, **{"CIPX_UPSTREAM_URL": upstream_url, "CIPX_CA_BUNDLE": CA_BUNDLE, **extra})
        self.stderr_path = home.parent / "daemon.stderr"
        home.parent.mkdir(parents=True, exist_ok=True)
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, "proxy", "--port", "0"],
                env=env,
                **{"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": stderr, **(popen or {})},
            )
        state_path = home / "state.json"

        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"daemon exited {self.proc.returncode}: {self.stderr()}")
            if not state_path.exists():
                return None
            state = json.loads(state_path.read_text())
            return state if state["pid"] == self.proc.pid else None  # not a killed predecessor's

        self.state = wait_for(ready, what="daemon state.json")
        self.port = self.state["ports"]["claude_code"]
        self.admin_port = self.state["ports"]["admin"]
        # The wire answers from here on; the work process comes up beside it (it writes the log and
        # its checkpoint as it starts): a test starts once both run.
        self.work_pid = wait_for(lambda: (w := self.stats().get("work") or {}).get("state") == "running"
                                 and w["pid"], what="the daemon's work process")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/admin/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def counter(self, name: str) -> int:
        return self.stats()["counters"][name]

    def viewer_cookie(self) -> dict[str, str]:
        """The header a browser signed in to this daemon's viewer sends: the cookie its sign-in set."""
        from opik_cipx.views.sign_in import SignInLinks

        conn = http.client.HTTPConnection("127.0.0.1", self.state["ports"]["viewer"], timeout=10)
        try:
            conn.request("GET", f"/?signin={SignInLinks(self.home).issue()}")
            resp = conn.getresponse()
            resp.read()
        finally:
            conn.close()
        assert resp.status == 200, resp.status
        return {"Cookie": resp.getheader("Set-Cookie").partition(";")[0]}

    def stop(self, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "cipx-home"


@pytest.fixture
def upstream():
    with FakeAnthropic(tls=True) as fake:
        yield fake


@pytest.fixture
def daemon(home: Path, upstream: FakeAnthropic):
    proc = DaemonProcess(home, upstream.url)
    yield proc
    try:
        proc.stop()
    finally:
        proc.kill()


@pytest.fixture(scope="session")
def preinstall():
    """`preinstall(home)`: the executable `sync` or `restart` from this tree would build
    (`$CIPX_HOME/bin/opik-cipx`, control/install.py), put in place first: built once per worker,
    so a test whose point is not that build saves it (0.35 s of CPU); `sync` finds it current and
    runs the daemon from it as from its own build. A test about the build keeps a fresh home."""
    from opik_cipx.control import zipapp

    data = zipapp.build_bytes(REPO / "opik_cipx", os.path.realpath(sys.executable))

    def put(home: Path) -> None:
        (home / "bin").mkdir(mode=0o700, parents=True, exist_ok=True)
        path = home / "bin" / "opik-cipx"
        path.write_bytes(data)
        path.chmod(0o755)

    return put
