"""Which file this process runs from, and how to run `opik-cipx proxy` from the same place.

Installed, opik-cipx is one zipapp (`~/.opik-cipx/bin/opik-cipx`); in a source checkout it is
the `opik_cipx` package run with `python -m`. The daemon records the file and its identity
(size and mtime) in `state.json`; `sync` compares them with its own and restarts a daemon that
runs an older copy. A source checkout has no identity: `opik-cipx restart` picks up edits.
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import opik_cipx


@dataclass(frozen=True)
class Executable:
    path: Path  # the zipapp, or the package directory of a source checkout
    is_zipapp: bool

    @property
    def identity(self) -> str | None:
        """`<size>:<mtime_ns>` of the zipapp; None for a source checkout or a vanished file."""
        if not self.is_zipapp:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return f"{st.st_size}:{st.st_mtime_ns}"

    def proxy_argv(self) -> list[str]:
        """The command line that runs the daemon from this same copy, with this interpreter."""
        return self.command_argv("proxy")

    def command_argv(self, command: str) -> list[str]:
        """The command line that runs `opik-cipx COMMAND` from this same copy, with this interpreter."""
        if self.is_zipapp:
            return [sys.executable, str(self.path), command]
        return [sys.executable, "-m", "opik_cipx", command]

    def proxy_env(self) -> dict[str, str]:
        """Extra environment the daemon command needs (PYTHONPATH for a source checkout)."""
        return {} if self.is_zipapp else {"PYTHONPATH": str(self.path.parent)}


def current() -> Executable:
    """The copy of opik-cipx this process was loaded from."""
    package = Path(opik_cipx.__file__).resolve().parent
    return Executable(package.parent, True) if package.parent.is_file() else Executable(package, False)
