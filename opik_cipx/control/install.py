"""Putting opik-cipx in place: the installed executable and the `opik-cipx` link on PATH.

**The installed executable** is `$CIPX_INSTALL_DIR/opik-cipx`, by default
`$CIPX_HOME/bin/opik-cipx`; the daemon always runs from it, so `state.json` names a real file.
`install` (run by install.sh, and by every `sync` and `restart`) makes it the code that is
running: run from that file, nothing to do; run from another zipapp (a plugin's `bin/`, a
download), that file is copied; run from a source tree (the plugin's own checkout, a developer's
`python -m opik_cipx`), the tree is built into it (control/zipapp.py). It is rewritten only when
it differs: a copy is compared byte for byte, a build by the source digest in its archive
comment (a few milliseconds, so `sync` stays fast). Its `#!` line names the interpreter running
`install`, which the hook launcher and install.sh have checked is Python 3.11 or newer.

**The link on PATH** is a symlink named `opik-cipx` to the installed executable, in the first of
`~/.local/bin` and `~/bin` that is on PATH; when neither is, in `~/.local/bin`, and the user is
told the line to add to their shell profile. Only those two personal directories are used:
never a system directory, never a directory another tool manages (`~/.cargo/bin`, pyenv
shims). A file of that name that is not our link is left alone and reported. `uninstall`
removes the link only when it is ours: a symlink whose target is the installed executable.
The directories made to hold the link (`~/.local`, `~/.local/bin` on a fresh home), and Claude
Code's `hooks/` directory when made for the launcher (below), are listed in
`$CIPX_HOME/made-dirs.json`; `uninstall` removes those that are empty at its end, and no others.

**Claude Code hooks for an install.sh user** (`ensure_hooks`): what the plugin gives a plugin
user, a SessionStart and a UserPromptSubmit hook that run `sync` through the hook launcher. The
launcher (carried in the executable: control/zipapp.py) is copied to Claude Code's `hooks/`
directory, with the managed-file marker `uninstall` looks for, and the hooks are added to the
user's `settings.json` beside their own (control/claude_settings.py). `opik-cipx install` (what
install.sh runs) adds them, unless our plugin is enabled; `sync` keeps the copy and the commands
current where they are registered. With both, the plugin's hooks do the work (LIFECYCLE.md).
"""

import json
import os
import sys
from pathlib import Path

from opik_cipx.config import Settings
from opik_cipx.control import claude_settings, executable, zipapp
from opik_cipx.control.userfiles import replace_file
from opik_cipx.home import default_home, private_dir, write_atomic

NAME = "opik-cipx"
MADE_DIRS = "made-dirs.json"  # in $CIPX_HOME: the directories made for the link
HOOKS_CREATED = "claude-hooks.json"  # in $CIPX_HOME: what of Claude Code's `hooks` setting was made for ours


def installed_path(settings: Settings, env: dict[str, str]) -> Path:
    """Where the executable the daemon runs lives."""
    install_dir = env.get("CIPX_INSTALL_DIR", "").strip()
    return (Path(install_dir).expanduser() if install_dir else settings.home / "bin") / NAME


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def _is_current(here: executable.Executable, dest: Path) -> bool:
    """True when `dest` already is the code at `here`."""
    try:
        if here.is_zipapp:
            return dest.read_bytes() == zipapp.with_interpreter(here.path.read_bytes(), _interpreter())
        comment = zipapp.source_comment(here.path)
        with open(dest, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - len(comment)))
            return fh.read() == comment
    except OSError:
        return False


def target(settings: Settings, env: dict[str, str]) -> tuple[executable.Executable, bool]:
    """(the executable the daemon runs, whether `install` must write it first)."""
    here, dest = executable.current(), installed_path(settings, env)
    if here.is_zipapp and here.path == dest.resolve():
        return here, False
    return executable.Executable(dest.resolve(), True), not _is_current(here, dest)


def install(settings: Settings, env: dict[str, str]) -> tuple[executable.Executable, str | None]:
    """Make the installed executable the running code; (the executable the daemon should run, a note).

    When the file cannot be written (read-only or full disk) the daemon runs from where this
    process runs, and the note says why.
    """
    exe, stale = target(settings, env)
    if not stale:
        return exe, None
    here, dest = executable.current(), installed_path(settings, env)
    try:
        data = (zipapp.with_interpreter(here.path.read_bytes(), _interpreter()) if here.is_zipapp
                else zipapp.build_bytes(here.path, _interpreter()))
        if dest.parent == settings.home / "bin":
            private_dir(dest.parent)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{NAME}.{os.getpid()}.tmp")
        try:
            tmp.write_bytes(data)
            tmp.chmod(0o755)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        return here, f"cannot install {dest} ({exc.strerror or exc}); the daemon runs from {here.path}"
    return exe, f"installed {dest} (from {here.path})"


def _home(env: dict[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def link_dirs(env: dict[str, str]) -> list[Path]:
    """The personal bin directories a link may go in, in order of preference."""
    home = _home(env)
    return [home / ".local" / "bin", home / "bin"]


def on_path(directory: Path, env: dict[str, str]) -> bool:
    entries = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry]
    return any(os.path.realpath(entry) == os.path.realpath(directory) for entry in entries)


def is_our_link(link: Path, target: Path) -> bool:
    """True when `link` is a symlink to `target` (the installed executable)."""
    try:
        pointee = os.readlink(link)
    except OSError:
        return False
    return Path(pointee) == target or os.path.realpath(link) == os.path.realpath(target)


def profile_hint(directory: Path, env: dict[str, str]) -> str:
    """What to add to the user's shell profile so `directory` is on PATH in new shells."""
    home = _home(env)
    shown = f"$HOME/{directory.relative_to(home)}" if home in directory.parents else str(directory)
    shell = Path(env.get("SHELL", "")).name
    if shell == "fish":
        return f"run `fish_add_path {shown}` once"
    if shell == "zsh":
        profile = "~/.zprofile"
    elif shell == "bash" and (home / ".bash_profile").exists():
        profile = "~/.bash_profile"
    else:
        profile = "~/.profile"
    return f"add the line `export PATH=\"{shown}:$PATH\"` to {profile}, then open a new terminal"


def find_link(target: Path, env: dict[str, str]) -> Path | None:
    """Our link, in whichever personal bin directory holds it."""
    return next((d / NAME for d in link_dirs(env) if is_our_link(d / NAME, target)), None)


def ensure_link(target: Path, env: dict[str, str], home: Path) -> tuple[bool, str | None]:
    """Link `opik-cipx` to `target` on PATH unless a link of ours exists; (created it, a note).
    Directories it makes are listed in `home` (`$CIPX_HOME`) for `remove_link`.

    The note of a new link says where it is and, when that directory is not on PATH, what to
    add to the shell profile; without a new link, a note says why there is none. Another process
    making the same link (or its directories) meanwhile is no error: the one that made it says so.
    """
    if find_link(target, env) is not None:
        return False, None
    candidates = link_dirs(env)
    directory = next((d for d in candidates if on_path(d, env)), candidates[0])
    link = directory / NAME
    taken = f"{link} exists and is not a link to {target}; left as is (it is what `opik-cipx` runs)"
    if os.path.lexists(link):
        return False, taken
    try:
        _remember(home, env, _make_public_dir(directory))
        link.symlink_to(target)
    except FileExistsError:
        return False, None if is_our_link(link, target) else taken
    except OSError as exc:
        return False, f"cannot link {link} ({exc.strerror or exc}); run opik-cipx as {target}"
    if on_path(directory, env):
        return True, f"linked {link} -> {target}: `opik-cipx` is on your PATH"
    return True, f"linked {link} -> {target}; {directory} is not on your PATH: {profile_hint(directory, env)}"


def _make_public_dir(directory: Path) -> list[Path]:
    """Create `directory` and missing parents as 0755 (a bin directory is not private), whatever
    the umask; the directories this call made (not those another process made meanwhile), outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        path.chmod(0o755)
        made.append(path)
    return made


def _remember(home: Path, env: dict[str, str], made: list[Path]) -> None:
    """Add `made` to the list in `home`; if it cannot be written, uninstall leaves them."""
    if made:
        try:
            write_atomic(home / MADE_DIRS, json.dumps([str(d) for d in made_dirs(home, env) + made]).encode())
        except OSError:
            pass


def made_dirs(home: Path, env: dict[str, str]) -> list[Path]:
    """The directories `ensure_link` and `ensure_hooks` made, as listed in `home`: only personal bin
    directories and their parents below the user's home, Claude Code's `hooks/` directory and the
    one holding it; [] if none or unreadable."""
    try:
        listed = json.loads((home / MADE_DIRS).read_text())
    except (OSError, ValueError):
        return []
    user_home = _home(env)
    allowed = {d for bin_dir in link_dirs(env) for d in (bin_dir, *bin_dir.parents) if user_home in d.parents}
    allowed |= {claude_settings.hooks_dir(env), claude_settings.hooks_dir(env).parent}
    return [Path(entry) for entry in listed if isinstance(entry, str) and Path(entry) in allowed] \
        if isinstance(listed, list) else []


def remove_link(target: Path, env: dict[str, str]) -> list[Path]:
    """Delete our links to `target` (never anything else); the paths removed."""
    removed = []
    for directory in link_dirs(env):
        link = directory / NAME
        if is_our_link(link, target):
            link.unlink()
            removed.append(link)
    return removed


def launcher_bytes(exe: executable.Executable) -> bytes | None:
    """The hook launcher that comes with `exe` (in the zipapp, or beside the package of a source tree)."""
    if not exe.is_zipapp:
        try:
            return (exe.path.parent / zipapp.LAUNCHER).read_bytes()
        except OSError:
            return None
    import zipfile

    try:
        with zipfile.ZipFile(exe.path) as archive:
            return archive.read(zipapp.LAUNCHER)
    except (OSError, KeyError, zipfile.BadZipFile):
        return None


def hook_variables(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """What our hooks set for the launcher, so it runs this install: `CIPX_HOME` when it is not the
    default one, `CIPX_CONFIG` and `CIPX_INSTALL_DIR` when they are set."""
    variables = {name: env[name].strip() for name in ("CIPX_CONFIG", "CIPX_INSTALL_DIR") if env.get(name, "").strip()}
    if settings.home.resolve() != default_home({"HOME": str(_home(env))}).resolve():
        variables["CIPX_HOME"] = str(settings.home.resolve())
    return variables


def ensure_hooks(settings: Settings, env: dict[str, str], exe: executable.Executable) -> tuple[str | None, str | None]:
    """Copy the launcher into Claude Code's `hooks/` and register our hooks; (a note for the user, a problem)."""
    data = launcher_bytes(exe)
    if data is None:
        return None, f"{exe.path} carries no hook launcher; no Claude Code hooks registered"
    launcher = claude_settings.hooks_dir(env) / claude_settings.HOOK_LAUNCHER
    try:
        _remember(settings.home, env, _make_public_dir(launcher.parent))  # uninstall takes them away again
        if not launcher.is_file() or launcher.read_bytes() != data:
            replace_file(launcher, data, default_mode=0o755)
        if not os.access(launcher, os.X_OK):
            launcher.chmod(0o755)
    except OSError as exc:
        return None, f"cannot write {launcher} ({exc.strerror or exc}); no Claude Code hooks registered"
    variables = hook_variables(settings, env)
    commands = {event: claude_settings.hook_command(launcher, event, variables)
                for event in claude_settings.HOOK_EVENTS}
    change = claude_settings.set_hooks(claude_settings.settings_path(env), commands)
    if change.created:
        try:
            created = sorted(set(hooks_created(settings.home) or ()) | set(change.created))
            write_atomic(settings.home / HOOKS_CREATED, json.dumps({"created": created}).encode())
        except OSError:
            pass  # uninstall then also takes out an empty `hooks` the user had
    if change.outcome == "unusable":
        return None, f"{change.path} left untouched: {change.detail}; no Claude Code hooks registered"
    if change.outcome == "set":
        return (f"added Claude Code hooks to {change.path}: every session start and prompt runs `opik-cipx sync` "
                f"({launcher})"), None
    return None, None


def hooks_created(home: Path) -> list[str] | None:
    """What `ensure_hooks` made in Claude Code's `hooks` setting to hold ours, as listed in `home`;
    None when there is no list (then anything our removal leaves empty goes)."""
    try:
        listed = json.loads((home / HOOKS_CREATED).read_text())["created"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [name for name in listed if isinstance(name, str)] if isinstance(listed, list) else None
