#!/usr/bin/env sh
# Install opik-cipx from this checkout (or a given .pyz) and start it.
#   ./install.sh                 build, install to ~/.opik-cipx/bin/opik-cipx, start the proxy
#   ./install.sh path/to.pyz     install that file instead of building
# CIPX_INSTALL_DIR overrides the install directory.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "opik-cipx needs Python 3.11 or newer; '$python' is $("$python" --version 2>&1 || echo missing)." >&2
  echo "Install a newer Python, or run: PYTHON=/path/to/python3.11 ./install.sh" >&2
  exit 1
fi

home=${CIPX_HOME:-$HOME/.opik-cipx}
dest_dir=${CIPX_INSTALL_DIR:-$home/bin}
dest="$dest_dir/opik-cipx"
umask 077
mkdir -p "$dest_dir"

if [ $# -ge 1 ]; then
  src=$1
else
  src=$("$python" "$here/build_zipapp.py" -o "$here/dist/opik-cipx.pyz")
fi
tmp="$dest.tmp.$$"
cp "$src" "$tmp"
chmod 0755 "$tmp"
mv -f "$tmp" "$dest"
echo "installed $dest"

"$dest" sync
echo "next: start Claude Code as usual; run '$dest status' to see the proxy."
