#!/usr/bin/env python3
"""Build `dist/opik-cipx.pyz`: the daemon and every command in one executable file.

Reproducible: the same source tree gives the same bytes (opik_cipx/control/zipapp.py).
`-p` sets the interpreter line (`#!/usr/bin/env python3` by default).
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "opik_cipx"
sys.path.insert(0, str(ROOT))

from opik_cipx.control import zipapp  # noqa: E402 - the package of this checkout, whatever is installed


def build(output: Path, interpreter: str = zipapp.DEFAULT_INTERPRETER) -> Path:
    return zipapp.build(output, PACKAGE, interpreter)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "dist" / "opik-cipx.pyz")
    parser.add_argument("-p", "--python", default=zipapp.DEFAULT_INTERPRETER,
                        help="interpreter for the #! line (default: /usr/bin/env python3)")
    args = parser.parse_args()
    print(build(args.output, args.python))
    return 0


if __name__ == "__main__":
    sys.exit(main())
