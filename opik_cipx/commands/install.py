"""`opik-cipx install`: make this copy the installed executable, put `opik-cipx` on PATH, and
give Claude Code the hooks that run `opik-cipx sync` (unless our plugin, which has its own, is enabled).

install.sh runs it with the zipapp it built (or was given); `sync` does the first two on its own
(control/install.py), so a plugin-only install gets a real executable on its first session.
Starts nothing: `opik-cipx sync` does that.
"""

import argparse
import os

from opik_cipx.config import ConfigError, Settings
from opik_cipx.control import claude_settings, install
from opik_cipx.control.daemon_control import paths_only_settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.set_defaults(on_config_error=on_config_error)


def on_config_error(args: argparse.Namespace, exc: ConfigError) -> int:
    print(f"opik-cipx: warning: {exc} (installing anyway)")
    return run(args, paths_only_settings(dict(os.environ)))


def run(args: argparse.Namespace, settings: Settings) -> int:
    env = dict(os.environ)
    exe, note = install.install(settings, env)
    dest = install.installed_path(settings, env)
    if exe.path != dest.resolve():
        print(f"opik-cipx: {note}")
        return 1
    print(f"opik-cipx: {note or f'{dest} is already this version'}")
    _, link_note = install.ensure_link(dest, env, settings.home)
    if link_note:
        print(f"opik-cipx: {link_note}")
    if claude_settings.plugin_enabled(claude_settings.settings_files(env, None)):
        print(f"opik-cipx: the Claude Code plugin {claude_settings.PLUGIN_ID} is enabled: its hooks run "
              "`opik-cipx sync`, so none are added to your settings")
        return 0
    note, problem = install.ensure_hooks(settings, env, exe)
    for line in (note, problem):
        if line:
            print(f"opik-cipx: {line}")
    return 0
