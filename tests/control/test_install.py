"""control/install.py: the installed executable (built or copied, rewritten only when it differs) and
the `opik-cipx` link on PATH (which directory, what to tell the user, only ever our own link)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opik_cipx.config import load_settings
from opik_cipx.control import executable, install, zipapp
from opik_cipx.control.userfiles import remove_empty
from tests.conftest import REPO


def env_for(home: Path, path: str = "/usr/bin:/bin", shell: str = "/bin/bash") -> dict[str, str]:
    return {"HOME": str(home), "PATH": path, "SHELL": shell}


@pytest.fixture
def user(tmp_path) -> Path:
    home = tmp_path / "ada"
    home.mkdir()
    return home


def test_the_link_goes_to_the_first_personal_bin_directory_on_path(user):
    state = user / ".opik-cipx"
    target = state / "bin" / "opik-cipx"
    local, own = user / ".local" / "bin", user / "bin"
    both = env_for(user, f"{own}:/usr/bin:{local}")
    created, note = install.ensure_link(target, both, state)
    assert created and note == f"linked {local}/opik-cipx -> {target}: `opik-cipx` is on your PATH"
    assert os.readlink(local / "opik-cipx") == str(target) and not own.exists()
    assert install.ensure_link(target, both, state) == (False, None)  # already there: nothing to say
    assert install.ensure_link(target, env_for(user, str(own)), state) == (False, None)  # never a second link
    assert install.remove_link(target, both) == [local / "opik-cipx"]
    assert remove_empty(install.made_dirs(state, both)) == [local, local.parent]  # made for it
    own.mkdir()
    created, note = install.ensure_link(target, env_for(user, f"/usr/bin:{own}"), state)
    assert created and (own / "opik-cipx").is_symlink() and "is on your PATH" in note


def test_uninstall_removes_only_the_directories_it_made_and_only_when_empty(user):
    state = user / ".opik-cipx"
    target = state / "bin" / "opik-cipx"
    env = env_for(user)
    (user / ".local").mkdir()  # the user's: stays, though empty at the end
    created, _ = install.ensure_link(target, env, state)
    local = user / ".local" / "bin"
    assert created and install.made_dirs(state, env) == [local]
    assert install.remove_link(target, env) == [local / "opik-cipx"]
    (local / "mytool").write_text("")  # the user put something of theirs there meanwhile
    assert remove_empty(install.made_dirs(state, env)) == [] and local.is_dir()
    (local / "mytool").unlink()
    assert remove_empty(install.made_dirs(state, env)) == [local] and (user / ".local").is_dir()


def test_a_made_dirs_list_names_nothing_but_personal_bin_directories(user):
    state = user / ".opik-cipx"
    state.mkdir()
    (user / "empty").mkdir()
    listed = [str(user / "empty"), str(user), "/tmp", str(user / ".local" / "bin"), 7]
    (state / install.MADE_DIRS).write_text(json.dumps(listed))
    assert install.made_dirs(state, env_for(user)) == [user / ".local" / "bin"]


@pytest.mark.parametrize("shell, bash_profile, expected", [
    ("/bin/bash", False, 'add the line `export PATH="$HOME/.local/bin:$PATH"` to ~/.profile, then open a new terminal'),
    ("/bin/bash", True, 'add the line `export PATH="$HOME/.local/bin:$PATH"` to ~/.bash_profile, then open a new '
                        'terminal'),
    ("/usr/bin/zsh", False, 'add the line `export PATH="$HOME/.local/bin:$PATH"` to ~/.zprofile, then open a new '
                            'terminal'),
    ("/usr/bin/fish", False, "run `fish_add_path $HOME/.local/bin` once"),
    ("", False, 'add the line `export PATH="$HOME/.local/bin:$PATH"` to ~/.profile, then open a new terminal'),
])
def test_the_profile_hint_fits_the_shell(user, shell, bash_profile, expected):
    if bash_profile:
        (user / ".bash_profile").write_text("")
    assert install.profile_hint(user / ".local" / "bin", env_for(user, shell=shell)) == expected


@pytest.mark.parametrize("between", ["mkdir", "_remember"])
def test_a_link_made_by_another_process_meanwhile_is_no_error(user, monkeypatch, between):
    """`install` (install.sh) and a hook's `sync`, or two syncs without `sync.lock`: the other makes the
    directories and the link between this one's look and its own mkdir (or symlink)."""
    state = user / ".opik-cipx"
    target = state / "bin" / "opik-cipx"
    env = env_for(user)
    others: list = []

    def the_other_first(real):
        def wrapper(*args, **kwargs):
            if not others:  # the first call: the other process runs whole, right here
                others.append(None)
                others[0] = install.ensure_link(target, env, state)
            return real(*args, **kwargs)
        return wrapper

    if between == "mkdir":
        monkeypatch.setattr(Path, "mkdir", the_other_first(Path.mkdir))
    else:
        monkeypatch.setattr(install, "_remember", the_other_first(install._remember))
    assert install.ensure_link(target, env, state) == (False, None)
    created, note = others[0]
    assert created and note.startswith(f"linked {user}/.local/bin/opik-cipx -> {target}")
    local = user / ".local" / "bin"
    assert os.readlink(local / "opik-cipx") == str(target)
    assert install.made_dirs(state, env) == [local.parent, local]  # each listed once, by the one that made it


def test_only_our_own_link_is_ever_removed_or_replaced(user):
    target = user / ".opik-cipx" / "bin" / "opik-cipx"
    local = user / ".local" / "bin"
    local.mkdir(parents=True)
    (local / "opik-cipx").symlink_to(user / "elsewhere" / "opik-cipx")
    created, note = install.ensure_link(target, env_for(user, str(local)), user / ".opik-cipx")
    assert not created and note.startswith(f"{local}/opik-cipx exists and is not a link to {target}; left as is")
    assert install.remove_link(target, env_for(user)) == []
    assert os.readlink(local / "opik-cipx") == str(user / "elsewhere" / "opik-cipx")


def settings_for(home: Path):
    return load_settings({"CIPX_HOME": str(home / ".opik-cipx"), "HOME": str(home),
                          "CIPX_CONFIG": str(home / "none.toml")})


def test_from_source_it_builds_once_and_again_only_when_the_source_changes(user, tmp_path, monkeypatch):
    package = tmp_path / "src" / "opik_cipx"
    package.mkdir(parents=True)
    for name in ("__init__.py", "cli.py"):
        (package / name).write_text((REPO / "opik_cipx" / name).read_text())
    monkeypatch.setattr(executable, "current", lambda: executable.Executable(package, False))
    settings, env = settings_for(user), env_for(user)
    dest = user / ".opik-cipx" / "bin" / "opik-cipx"
    assert install.target(settings, env) == (executable.Executable(dest, True), True)
    exe, note = install.install(settings, env)
    assert exe == executable.Executable(dest, True) and note == f"installed {dest} (from {package})"
    data = dest.read_bytes()
    assert data.startswith(f"#!{os.path.realpath(sys.executable)}\n".encode())
    assert data.endswith(zipapp.source_comment(package)) and os.stat(dest).st_mode & 0o777 == 0o755
    assert os.stat(dest.parent).st_mode & 0o777 == 0o700
    mtime = dest.stat().st_mtime_ns
    assert install.install(settings, env) == (exe, None) and dest.stat().st_mtime_ns == mtime
    (package / "cli.py").write_text((package / "cli.py").read_text() + "\n# changed\n")
    assert install.target(settings, env)[1] is True
    assert install.install(settings, env)[1] == f"installed {dest} (from {package})"


def test_from_another_zipapp_it_copies_with_this_interpreter_and_the_copy_runs(user, tmp_path, monkeypatch,
                                                                               built_pyz):
    pyz = tmp_path / "plugin" / "bin" / "opik-cipx"  # a plugin release carries the built executable
    pyz.parent.mkdir(parents=True)
    shutil.copy2(built_pyz, pyz)
    monkeypatch.setattr(executable, "current", lambda: executable.Executable(pyz, True))
    settings, env = settings_for(user), {**env_for(user), "CIPX_INSTALL_DIR": str(user / "tools")}
    exe, note = install.install(settings, env)
    dest = user / "tools" / "opik-cipx"
    assert exe.path == dest and note == f"installed {dest} (from {pyz})"
    assert dest.read_bytes() == zipapp.with_interpreter(pyz.read_bytes(), os.path.realpath(sys.executable))
    assert install.install(settings, env) == (exe, None)
    version = subprocess.run([str(dest), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("opik-cipx ")  # through its #! line


def test_an_unwritable_install_directory_leaves_the_daemon_where_it_runs(user, tmp_path, monkeypatch):
    here = executable.Executable(REPO / "opik_cipx", False)
    monkeypatch.setattr(executable, "current", lambda: here)
    blocked = user / "blocked"
    blocked.write_text("a file where a directory should be")
    exe, note = install.install(settings_for(user), {**env_for(user), "CIPX_INSTALL_DIR": str(blocked)})
    assert exe == here and note.startswith(f"cannot install {blocked}/opik-cipx (")
    assert note.endswith(f"the daemon runs from {REPO / 'opik_cipx'}")
