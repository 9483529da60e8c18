"""End to end, as a user runs it: install.sh, the installed pyz, a request through the proxy, upgrades,
crashes, the kill switch and uninstall — real subprocesses, a temporary HOME, detached supervisor.

Bare `./install.sh`, as README says, builds the executable and runs `sync`: the first test runs it
so (and the checks it makes before it builds). The others install the executable built once for
the run (`built_pyz`) as bare `./install.sh` would (`install_prebuilt`), or with `./install.sh PYZ`
alone where no daemon is needed: what they test is what the install does, not the build.
"""

import http.client
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from opik_cipx import __version__
from opik_cipx.control.claude_settings import MANAGED_MARKER
from tests.conftest import REPO, wait_for
from tests.lifecycle_helpers import SESSION_START, Machine, install_prebuilt, install_sh, wait_gone

# Each scenario starts on a machine with nothing of ours on it: the first install or sync builds
# or installs the executable (tests.lifecycle_helpers, `no_executable`).
pytestmark = pytest.mark.no_executable

USER_SETTINGS = {"model": "opus", "permissions": {"allow": ["Bash(git status)"]}, "env": {"DISABLE_TELEMETRY": "1"}}


class Installed:
    """A machine with opik-cipx installed by install.sh; commands run through the installed pyz."""

    def __init__(self, machine: Machine, built: Path):
        self.m = machine
        self.built = built  # this tree, built once for the run
        self.pyz = machine.home / "bin" / "opik-cipx"

    def install(self, *args: str, **extra: str):
        """`./install.sh ARGS`: bare, it builds the executable and runs `sync`."""
        return install_sh(self.m, *args, **extra)

    def install_built(self, **extra: str):
        """What bare `./install.sh` does, with the executable built already: install it, then `sync`."""
        return install_prebuilt(self.m, self.built, **extra)

    def __call__(self, *args: str, input: str | None = None, **extra: str):
        env_extra = {"PYTHONPATH": "", **extra}
        return self.m.run([sys.executable, str(self.pyz), *args], input=input, **env_extra)


@pytest.fixture
def installed(machine_with_upstream, built_pyz) -> Installed:
    m = machine_with_upstream
    m.claude_dir.mkdir(parents=True)
    m.settings_path.write_text(json.dumps(USER_SETTINGS, indent=2) + "\n")
    return Installed(m, built_pyz)


def build_variant(tmp_path: Path, version: str) -> Path:
    """A pyz of this tree with another version number, as a released upgrade would be."""
    tree = tmp_path / f"tree-{version}"
    shutil.copytree(REPO / "opik_cipx", tree / "opik_cipx", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "build_zipapp.py", tree / "build_zipapp.py")
    init = tree / "opik_cipx" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "', f'__version__ = "{version}"  # was "', 1))
    out = tree / "opik-cipx.pyz"
    subprocess.run([sys.executable, str(tree / "build_zipapp.py"), "-o", str(out)], check=True, capture_output=True)
    return out


def post(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/v1/messages", body=b'{"model": "claude-x", "messages": []}',
                 headers={"content-type": "application/json", "x-api-key": "sk-test"})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def test_install_sync_status_request_and_a_noop_sync(installed, upstream):
    m = installed.m
    result = installed.install()  # bare, as README says: build, install, sync
    assert result.returncode == 0, result.stderr
    assert f"installed {installed.pyz}" in result.stdout
    assert result.stdout.endswith(f"next: start Claude Code as usual; '{installed.pyz} status' shows what the proxy "
                                  f"sees, '{installed.pyz} viewer' opens the local viewer.\n")  # not on PATH: in full
    assert stat.S_IMODE(installed.pyz.stat().st_mode) == 0o755
    state = m.state()
    assert state["executable"] == str(installed.pyz.resolve()) and state["executable_id"]
    assert not (REPO / "dist" / "opik-cipx.pyz.tmp").exists()

    status = installed("status")
    assert status.returncode == 0 and f"running (pid {state['pid']})" in status.stdout, status.stderr

    assert post(m.port) == 200
    assert upstream.seen and upstream.seen[-1].path == "/v1/messages"
    wait_for(lambda: m.stats()["counters"]["requests_captured"] == 1, what="requests_captured == 1")
    assert "requests_captured" in installed("status", "--verbose").stdout  # counters of work done: --verbose

    settings_bytes = m.settings_path.read_bytes()
    doc = json.loads(settings_bytes)
    launcher = m.claude_dir / "hooks" / "opik-cipx-hook-launcher"
    hooks = {event: [{"hooks": [{"type": "command", "command": f"{launcher} {event}", "timeout": 60}]}]
             for event in ("SessionStart", "UserPromptSubmit")}
    assert doc == {**USER_SETTINGS, "env": {"DISABLE_TELEMETRY": "1", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{m.port}"},
                   "hooks": hooks}
    assert settings_bytes.decode() == json.dumps(doc, indent=2) + "\n"

    hook = SESSION_START.read_text()
    for _ in range(2):  # the second after one that saw this session: as quiet (how fast: bench/bench_sync.py)
        again = installed("sync", input=hook)
        assert again.returncode == 0 and again.stdout == "" and again.stderr == ""
    assert m.state() == state and m.settings_path.read_bytes() == settings_bytes


def test_install_checks_python_version(installed, tmp_path):
    old = tmp_path / "python-old"
    old.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'Python 3.9.18' && exit 0\nexit 1\n")
    old.chmod(0o755)
    result = subprocess.run([str(REPO / "install.sh")], env=installed.m.env(PYTHON=str(old)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "needs Python 3.11 or newer" in result.stderr and "3.9.18" in result.stderr
    assert not installed.pyz.exists()


def test_install_checks_that_python_has_sqlite3(installed, tmp_path):
    blocker = tmp_path / "no-sqlite"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['_sqlite3'] = None\n")
    python = tmp_path / "python-without-sqlite"
    python.write_text(f"#!/bin/sh\nPYTHONPATH={blocker} exec {os.path.realpath(sys.executable)} \"$@\"\n")
    python.chmod(0o755)
    result = subprocess.run([str(REPO / "install.sh")], env=installed.m.env(PYTHON=str(python)),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and not installed.pyz.exists()
    assert f"opik-cipx needs Python's sqlite3 module (its local ledger); '{python}' was built without it." \
        in result.stderr and "apt install libsqlite3-dev" in result.stderr


def test_restart_and_sync_pick_up_a_new_pyz(installed, tmp_path):
    m = installed.m
    assert installed.install_built().returncode == 0
    first = m.state()

    result = installed.install(str(build_variant(tmp_path, "9.0.1")))
    assert result.returncode == 0 and "next: run" in result.stdout
    assert m.state() == first  # installing a file alone does not touch the running daemon
    restarted = installed("restart")
    assert restarted.returncode == 0, restarted.stderr
    second = m.state()
    assert second["pid"] != first["pid"] and second["version"] == "9.0.1"
    wait_gone(first["pid"])
    assert m.stats()["version"] == "9.0.1"

    assert installed.install(str(installed.built)).returncode == 0  # new again: this tree, not 9.0.1
    synced = installed("sync", input=SESSION_START.read_text())
    assert synced.returncode == 0 and "executable changed" in synced.stderr
    assert m.state()["version"] == __version__ != "9.0.1" and m.state()["pid"] != second["pid"]
    assert m.base_url() == f"http://127.0.0.1:{m.port}"


def test_kill_9_is_reported_by_status_and_repaired_by_sync(installed):
    m = installed.m
    assert installed.install_built().returncode == 0
    pid, supervisor = m.state()["pid"], m.supervisor()["pid"]
    os.kill(supervisor, signal.SIGKILL)  # first: it would start the daemon again at once (tests/test_supervision.py)
    wait_gone(supervisor)
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    status = installed("status")
    assert status.returncode == 1 and f"pid {pid}" in status.stderr and "opik-cipx restart" in status.stderr
    assert installed("sync", input=SESSION_START.read_text()).returncode == 0
    assert installed("status").returncode == 0
    assert m.state()["pid"] != pid and post(m.port) == 200


def test_kill_switch_points_claude_code_straight_at_anthropic(installed):
    m = installed.m
    assert installed.install_built().returncode == 0
    pid = m.state()["pid"]
    result = installed("sync", input=SESSION_START.read_text(), CIPX_DISABLED="1")
    assert result.returncode == 0 and result.stdout == ""
    wait_gone(pid)
    assert m.state() is None
    # no ANTHROPIC_BASE_URL: Claude Code goes to api.anthropic.com; our hooks stay, to bring it back when switched on
    assert {k: v for k, v in m.settings().items() if k != "hooks"} == USER_SETTINGS
    assert installed("proxy", CIPX_DISABLED="1").returncode == 0  # the backstop
    status = installed("status")
    assert status.returncode == 0 and "not running" in status.stdout


def snapshot(root: Path, skip: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and skip not in p.parents}


def test_uninstall_leaves_nothing_of_ours_and_everything_of_the_users(installed):
    m = installed.m
    hooks = m.claude_dir / "hooks"
    hooks.mkdir()
    (hooks / "log-event.sh").write_text("#!/bin/sh\ncat > /tmp/last-event.json\n")
    (hooks / "opik-cipx-hook-launcher").write_text(f"#!/bin/sh\n# {MANAGED_MARKER}\nexit 0\n")
    (m.user_home / "notes.txt").write_text("mine")
    unit = m.user_home / ".config" / "systemd" / "user" / "opik-cipx.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("# Managed by opik-cipx\n")  # left by an earlier install under a systemd session
    before = snapshot(m.user_home, m.home)
    assert installed.install_built().returncode == 0
    pid = m.state()["pid"]

    refused = installed("uninstall")  # no terminal to confirm on, no --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr and m.state()["pid"] == pid

    result = installed("uninstall", "--yes")
    assert result.returncode == 0, result.stderr
    wait_gone(pid)
    assert not m.home.exists()
    after = snapshot(m.user_home, m.home)
    expected = {k: v for k, v in before.items()
                if k not in (".claude/hooks/opik-cipx-hook-launcher", ".config/systemd/user/opik-cipx.service")}
    assert after.keys() == expected.keys()
    assert json.loads(after[".claude/settings.json"]) == USER_SETTINGS
    assert {k: v for k, v in after.items() if k != ".claude/settings.json"} == \
        {k: v for k, v in expected.items() if k != ".claude/settings.json"}
    assert "/plugin uninstall" in result.stdout


def test_uninstall_refuses_a_state_root_that_is_the_home_directory(installed):
    m = installed.m
    result = m.cli("uninstall", "--yes", CIPX_HOME=str(m.user_home))
    assert result.returncode == 1 and "refusing" in result.stderr
    assert m.user_home.exists() and m.settings_path.exists()


def test_uninstall_refuses_a_state_root_that_holds_claude_codes_configuration(installed):
    m = installed.m
    config = m.home / "claude"  # CLAUDE_CONFIG_DIR inside $CIPX_HOME: deleting it would take the user's settings
    config.mkdir(parents=True)
    (config / "settings.json").write_text("{}\n")
    result = m.cli("uninstall", "--yes", CLAUDE_CONFIG_DIR=str(config))
    assert result.returncode == 1 and "holds it" in result.stderr and (config / "settings.json").exists()


def files_and_links(root: Path) -> dict[str, bytes]:
    """Every file, symlink (a dangling one too) and directory under `root`, with its bytes, its
    target, or b"dir"."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = b"-> " + os.readlink(path).encode()
        elif path.is_file():
            out[str(path.relative_to(root))] = path.read_bytes()
        elif path.is_dir():
            out[str(path.relative_to(root))] = b"dir"
    return out


def login_shell(m: Machine, command: str, **extra: str):
    """`bash -lc COMMAND` as a new login of the machine's user: only HOME and what a login sets up."""
    env = {"HOME": str(m.user_home), "PATH": "/usr/bin:/bin", "SHELL": "/bin/bash", **m.extra, **extra}
    return subprocess.run(["bash", "-lc", command], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


SKEL = Path("/etc/skel")


@pytest.mark.skipif(not (SKEL / ".profile").exists() or ".local/bin" not in (SKEL / ".profile").read_text(),
                    reason="needs a skeleton ~/.profile that puts ~/.local/bin on PATH (Debian, Ubuntu)")
def test_a_fresh_home_finds_opik_cipx_in_a_new_login_shell_and_uninstall_leaves_nothing(installed):
    m = installed.m
    shutil.rmtree(m.claude_dir)  # a home as `useradd -m` makes it: no Claude Code settings yet
    shutil.copytree(SKEL, m.user_home, dirs_exist_ok=True)
    before = {k: v for k, v in files_and_links(m.user_home).items() if not k.startswith(".opik-cipx")}
    result = installed.install_built()
    assert result.returncode == 0, result.stderr
    link = m.user_home / ".local" / "bin" / "opik-cipx"
    assert f"linked {link} -> {installed.pyz}" in result.stdout

    found = login_shell(m, "command -v opik-cipx")
    assert found.returncode == 0 and found.stdout.strip() == str(link), found.stderr
    status = login_shell(m, "opik-cipx status")
    assert status.returncode == 0 and f"running (pid {m.state()['pid']})" in status.stdout, status.stderr

    pid = m.state()["pid"]
    gone = login_shell(m, "opik-cipx uninstall --yes")
    assert gone.returncode == 0, gone.stderr
    assert f"removed {link}" in gone.stdout
    wait_gone(pid)
    assert f"removed {m.settings_path} (left empty)" in gone.stdout
    assert f"removed {m.claude_dir} (left empty)" in gone.stdout
    # the link and the directories made for it, the executable, the state, Claude Code's settings: nothing of ours
    assert files_and_links(m.user_home) == before
    assert login_shell(m, "command -v opik-cipx").returncode != 0


def test_when_no_personal_bin_directory_is_on_path_install_says_the_line_that_puts_it_there(installed):
    m = installed.m
    result = installed.install(str(installed.built))  # no daemon needed: the file, the link, what it says
    assert result.returncode == 0, result.stderr
    hint = 'add the line `export PATH="$HOME/.local/bin:$PATH"` to ~/.profile, then open a new terminal'
    assert f"{m.user_home / '.local' / 'bin'} is not on your PATH: {hint}" in result.stdout
    assert f"next: run '{installed.pyz} sync'" in result.stdout  # not on PATH yet: the full path
    assert login_shell(m, "command -v opik-cipx").returncode != 0
    (m.user_home / ".profile").write_text('export PATH="$HOME/.local/bin:$PATH"\n')
    found = login_shell(m, "command -v opik-cipx")
    assert found.stdout.strip() == str(m.user_home / ".local" / "bin" / "opik-cipx"), found.stderr


def test_an_existing_personal_bin_on_path_is_used_and_a_foreign_file_is_never_replaced(installed):
    m = installed.m
    own_bin = m.user_home / "bin"
    own_bin.mkdir()
    path = f"{own_bin}:{os.environ['PATH']}"  # ~/bin is on PATH, ~/.local/bin is not
    result = installed.install(str(installed.built), PATH=path)  # no daemon needed: the file, the link, what it says
    assert result.returncode == 0, result.stderr
    assert f"linked {own_bin / 'opik-cipx'} -> {installed.pyz}: `opik-cipx` is on your PATH" in result.stdout
    assert "next: run 'opik-cipx sync'" in result.stdout  # on PATH: the short name
    assert not (m.user_home / ".local").exists()

    (own_bin / "opik-cipx").unlink()
    (own_bin / "opik-cipx").write_text("#!/bin/sh\necho mine\n")
    again = installed("install", PATH=path)
    assert again.returncode == 0
    assert f"{own_bin / 'opik-cipx'} exists and is not a link to {installed.pyz}; left as is" in again.stdout
    assert installed("uninstall", "--yes", PATH=path).returncode == 0
    assert (own_bin / "opik-cipx").read_text() == "#!/bin/sh\necho mine\n"  # not ours: kept
