#!/usr/bin/env sh
# Install opik-cipx from this checkout (or a given .pyz).
#   ./install.sh                 build, install to ~/.opik-cipx/bin/opik-cipx, then `opik-cipx sync`:
#                                start the proxy and point Claude Code at it
#   ./install.sh path/to.pyz     install that file only; run `opik-cipx sync` yourself
# CIPX_INSTALL_DIR overrides the install directory; PYTHON picks the interpreter (3.11+).
set -eu

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "opik-cipx needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
  echo "Install a newer Python, or run: PYTHON=/path/to/python3.11 ./install.sh" >&2
  exit 1
fi
python=$(command -v "$python")

home=${CIPX_HOME:-$HOME/.opik-cipx}
dest_dir=${CIPX_INSTALL_DIR:-$home/bin}
dest="$dest_dir/opik-cipx"
umask 077
mkdir -p "$dest_dir"

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
cp "$src" "$dest.tmp.$$"
chmod 0755 "$dest.tmp.$$"
mv -f "$dest.tmp.$$" "$dest"
echo "installed $dest"

if [ $# -ge 1 ]; then
  echo "next: run '$python $dest sync' to start the proxy and point Claude Code at it."
  exit 0
fi
if ! "$python" "$dest" sync </dev/null; then
  echo "opik-cipx: installed, but the proxy did not come up; see '$dest status' and '$dest logs'." >&2
  exit 1
fi
echo "next: start Claude Code as usual; '$dest status' shows what the proxy sees."
