"""Helpers for the lifecycle tests (sync, status, install, launcher): a sandboxed machine.

Every test gets its own HOME and `$CIPX_HOME` under tmp_path, the supervisor forced to
`detached` (no systemd or launchd unit is ever installed for real), Claude Code's config dir
inside that HOME, and a port held for the Claude Code listener (`tests.conftest.ReservedPort`) so
tests can run side by side. Daemons a test starts are killed, and the port let go, in teardown.

The executable: `built_pyz` is this tree built once per run by `build_zipapp.py` (as a bare
`./install.sh` builds it) and shared by the xdist workers, for the tests whose point is not the
build: `install_prebuilt` does what bare `./install.sh` does with it, and `Machine.put_executable`
installs it as a first `sync` from this checkout would build it (so that `sync` builds nothing).
The tests where the build, a new version or bare `./install.sh` itself is the point build their own.
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from opik_cipx.control import zipapp
from opik_cipx.control.daemon_control import is_our_process, pid_alive
from opik_cipx.home import private_dir
from tests.conftest import ReservedPort, cli_env, wait_for
from tests.fake_anthropic import CA_BUNDLE
from tests.in_process import run_in_process

REPO = Path(__file__).resolve().parent.parent
SESSION_START = sorted((REPO / "tests" / "fixtures" / "claude-code" / "simple").glob("hook_SessionStart_*.json"))[0]
# Inherited variables that would point a test at this machine's real Claude Code or systemd.
_LEAKY = ("CLAUDE_CONFIG_DIR", "ANTHROPIC_BASE_URL", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR", "CIPX_INSTALL_DIR")


class Machine:
    """A temporary HOME with opik-cipx's state root in it, and the commands to drive it."""

    def __init__(self, root: Path, upstream_url: str | None = None):
        self.user_home = root
        self.home = root / ".opik-cipx"
        self.claude_dir = root / ".claude"
        self.settings_path = self.claude_dir / "settings.json"
        self._port = ReservedPort()
        self.port = self._port.port
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "ports.json").write_text(json.dumps({"claude_code": self.port}))
        self.extra = {"CIPX_SUPERVISOR": "detached"}
        if upstream_url:
            self.extra.update(CIPX_UPSTREAM_URL=upstream_url, CIPX_CA_BUNDLE=CA_BUNDLE)
        self.pids: set[int] = set()

    def env(self, **extra: str) -> dict[str, str]:
        env = cli_env(self.home, **self.extra)
        for key in _LEAKY:
            env.pop(key, None)
        env.update(extra)
        return env

    def run(self, argv: list[str], input: str | None = None, timeout: float = 60, **extra: str):
        result = subprocess.run(argv, env=self.env(**extra), capture_output=True, text=True,
                                timeout=timeout, input=input, stdin=None if input is not None else subprocess.DEVNULL)
        self.remember_daemon()
        return result

    def cli(self, *args: str, input: str | None = None, **extra: str):
        """`python -m opik_cipx ARGS` from this checkout, in a subprocess."""
        return self.run([sys.executable, "-m", "opik_cipx", *args], input=input, **extra)

    def command(self, *args: str, input: str | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
        """`opik-cipx ARGS` in this process, as `cli` would run it (`tests/in_process.py`): for a
        command that starts no process (docs/DEVELOPING.md, "Tests")."""
        result = run_in_process(args, self.env(**extra), input)
        self.remember_daemon()
        return result

    def put_executable(self, pyz: Path) -> Path:
        """Install `pyz` (a build of this tree: `built_pyz`) where `sync` installs the executable, with
        the bytes a first `sync` from this checkout would build there; that `sync` then builds nothing."""
        dest = self.home / "bin" / "opik-cipx"
        private_dir(dest.parent)
        dest.write_bytes(zipapp.with_interpreter(pyz.read_bytes(), os.path.realpath(sys.executable)))
        dest.chmod(0o755)
        return dest

    def state(self) -> dict | None:
        try:
            return json.loads((self.home / "state.json").read_text())
        except (OSError, ValueError):
            return None

    def remember_daemon(self) -> None:
        state = self.state()
        if state:
            self.pids.add(state["pid"])

    def supervisor(self) -> dict | None:
        """The detached supervisor's record (`supervisor.json`), if any."""
        try:
            return json.loads((self.home / "supervisor.json").read_text())
        except (OSError, ValueError):
            return None

    def stats(self) -> dict:
        port = self.state()["ports"]["admin"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/admin/stats", timeout=5) as resp:
            return json.loads(resp.read())

    def settings(self) -> dict:
        return json.loads(self.settings_path.read_text())

    def base_url(self) -> str | None:
        if not self.settings_path.exists():
            return None
        return self.settings().get("env", {}).get("ANTHROPIC_BASE_URL")

    def kill_all(self) -> None:
        supervisor = self.supervisor()  # first, with the daemon it runs (its process group): it would restart it
        if supervisor and is_our_process(supervisor["pid"], "supervise"):
            os.killpg(supervisor["pid"], signal.SIGKILL)
        self.remember_daemon()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._port.close()


def _install_sh_env(m: Machine, **extra: str) -> dict[str, str]:
    """install.sh's environment: this interpreter as `PYTHON`, not the test's PYTHONPATH (the pyz
    stands on its own)."""
    env = m.env(PYTHON=sys.executable, **extra)
    env.pop("PYTHONPATH")
    return env


def install_sh(m: Machine, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """`./install.sh ARGS` on the machine."""
    result = subprocess.run([str(REPO / "install.sh"), *args], env=_install_sh_env(m, **extra), capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    m.remember_daemon()
    return result


def install_prebuilt(m: Machine, pyz: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """What bare `./install.sh` does, but with `pyz` built already (`built_pyz`): `./install.sh PYZ`,
    then the `sync` install.sh would run next (the installed executable, stdin empty, install.sh's
    environment). Its result carries both outputs and the first failure's status, not the last
    line bare install.sh prints (tests of that line run it bare)."""
    installed = install_sh(m, str(pyz), **extra)
    if installed.returncode != 0:
        return installed
    env = _install_sh_env(m, **extra)
    dest = Path(env.get("CIPX_INSTALL_DIR") or m.home / "bin") / "opik-cipx"
    synced = subprocess.run([os.path.realpath(sys.executable), str(dest), "sync"], env=env, capture_output=True,
                            text=True, timeout=120, stdin=subprocess.DEVNULL)
    m.remember_daemon()
    return subprocess.CompletedProcess(installed.args, synced.returncode, installed.stdout + synced.stdout,
                                       installed.stderr + synced.stderr)


@pytest.fixture(scope="session")
def built_pyz(tmp_path_factory) -> Path:
    """This tree built by `build_zipapp.py`, once per run: the first worker to ask builds it, under a
    lock, in the directory the run's workers share (`-n 0`: the run's own). Read only: install it
    (`install_sh`, `install_prebuilt`, `Machine.put_executable`) or copy it."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    pyz = shared / "opik-cipx.pyz"
    with open(shared / "opik-cipx.pyz.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not pyz.exists():
            partial = shared / f"opik-cipx.pyz.{os.getpid()}.tmp"
            build = subprocess.run([sys.executable, str(REPO / "build_zipapp.py"), "-o", str(partial)],
                                   capture_output=True, text=True, timeout=60)
            assert build.returncode == 0, build.stderr
            os.replace(partial, pyz)
    return pyz


def wait_gone(pid: int, timeout_s: float = 15) -> None:
    wait_for(lambda: not pid_alive(pid), timeout_s=timeout_s, what=f"pid {pid} to exit")


def _machine(request: pytest.FixtureRequest, root: Path, upstream_url: str | None = None) -> Machine:
    """A `Machine` with this tree's executable installed (`Machine.put_executable`), so that its first
    `sync` builds nothing (about 0.3 s of CPU each), unless the test is marked `no_executable`: the
    first sync's build, or no executable at all, is what it tests."""
    m = Machine(root, upstream_url)
    if request.node.get_closest_marker("no_executable") is None:
        m.put_executable(request.getfixturevalue("built_pyz"))
    return m


@pytest.fixture
def machine(request: pytest.FixtureRequest, tmp_path: Path):
    m = _machine(request, tmp_path / "user")
    yield m
    m.kill_all()


@pytest.fixture
def machine_with_upstream(request: pytest.FixtureRequest, tmp_path: Path, upstream):
    m = _machine(request, tmp_path / "user", upstream.url)
    yield m
    m.kill_all()
