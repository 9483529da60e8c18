"""Shared test helpers: the daemon as a real subprocess, polling with deadlines, fixtures."""

import fcntl
import gc
import http.client
import json
import os
import signal
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
from tests.ports import ReservedPort

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


def pytest_configure(config) -> None:
    """Before the workers start (they inherit it): the suite's interpreters (its workers and the
    hundreds of daemons, commands and installs they start) keep the compiled modules of the package
    and the tests beside them, in `__pycache__` (ignored by git), as a user's interpreter would, even
    where the environment says PYTHONDONTWRITEBYTECODE; the standard library and the test
    dependencies use those their installation compiled."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


@pytest.hookimpl(wrapper=True)
def pytest_collection(session):
    """The xdist workers collect one at a time: on a fresh checkout the first compiles the test
    modules, rewriting their asserts (about 4 s of CPU), and the others load what it wrote (about
    1 s each), where four compiling the same at once cost four times that on two cores."""
    if not hasattr(session.config, "workerinput"):
        return (yield)
    with open(Path(tempfile.gettempdir()) / f"opik-cipx-tests-collect-{os.getuid()}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return (yield)


def pytest_collection_finish(session) -> None:
    """What collection built (the test modules, Hypothesis, the package) stays for the whole run:
    out of the garbage collector's passes, which otherwise walk it again and again (about 5 % of
    the in-process tests' CPU)."""
    gc.collect()
    gc.freeze()


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


# What Hypothesis computes once and keeps in its storage directory (the Unicode tables its text
# strategies draw from, about 1.3 s of CPU; the constants of the package's modules, 0.5 s) is kept
# outside the checkout: a new clone's workers would each compute it again.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY",
                      str(Path(tempfile.gettempdir()) / f"opik-cipx-tests-hypothesis-{os.getuid()}"))
