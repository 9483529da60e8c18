#!/usr/bin/env sh
# Install opik-cipx from this checkout (or a given .pyz).
#   ./install.sh                 build it, install it as ~/.opik-cipx/bin/opik-cipx, link `opik-cipx` on PATH
#                                (~/.local/bin, or ~/bin when only that is on PATH), add the Claude Code hooks
#                                that run `opik-cipx sync` at every session start and prompt (unless the
#                                opik-cipx plugin, which has its own, is enabled), then `opik-cipx sync`:
#                                start the proxy and point Claude Code at it
#   ./install.sh path/to.pyz     install that file (and the link and hooks) only; run `opik-cipx sync` yourself
# CIPX_INSTALL_DIR overrides the install directory; PYTHON picks the interpreter (3.11+, with its
# sqlite3 module), which the installed file's #! line then names.
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "opik-cipx needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
  echo "Install a newer Python, or run: PYTHON=/path/to/python3.11 ./install.sh" >&2
  exit 1
fi
if ! "$python" -c 'import sqlite3' 2>/dev/null; then
  echo "opik-cipx needs Python's sqlite3 module (its local ledger); '$python' was built without it." >&2
  echo "Run with another Python 3.11+ (PYTHON=/usr/bin/python3 ./install.sh), or rebuild this one after installing SQLite's headers (Debian/Ubuntu: apt install libsqlite3-dev; Fedora: dnf install sqlite-devel)." >&2
  exit 1
fi
python=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')  # a version manager's shim resolved

home=${CIPX_HOME:-$HOME/.opik-cipx}
dest=${CIPX_INSTALL_DIR:-$home/bin}/opik-cipx
umask 077

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ $# -ge 1 ]; then
  src=$1
  if [ ! -f "$src" ]; then
    echo "opik-cipx: no such file: $src" >&2
    exit 1
  fi
else
  src=$("$python" "$here/build_zipapp.py" -o "$work/opik-cipx.pyz")
fi
"$python" "$src" install

on_path=$(command -v opik-cipx 2>/dev/null || true)
if [ -n "$on_path" ] && [ "$on_path" -ef "$dest" ]; then run=opik-cipx; else run=$dest; fi  # what to type, in this shell
if [ $# -ge 1 ]; then
  echo "next: run '$run sync' to start the proxy and point Claude Code at it."
  exit 0
fi
if ! "$python" "$dest" sync </dev/null; then
  echo "opik-cipx: installed, but the proxy did not come up; see '$run status' and '$run logs'." >&2
  exit 1
fi
echo "next: start Claude Code as usual; '$run status' shows what the proxy sees, '$run viewer' opens the local viewer."
