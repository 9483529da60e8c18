#!/usr/bin/env python3
"""Build `dist/opik-cipx.pyz`: the daemon and every command in one executable file.

Reproducible: files are added in sorted order with a fixed timestamp and mode, so the same
source tree always gives the same bytes.
"""

import argparse
import io
import stat
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
PACKAGE = ROOT / "opik_cipx"
SHEBANG = b"#!/usr/bin/env python3\n"
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
ENTRY = b"import sys\nfrom opik_cipx.cli import main\nsys.exit(main())\n"


def package_files() -> list[Path]:
    return sorted(
        p for p in PACKAGE.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".json")
    )


def _add(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    archive.writestr(info, data, compresslevel=9)


def build(output: Path) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", ENTRY)
        for path in package_files():
            _add(archive, path.relative_to(ROOT).as_posix(), path.read_bytes())
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(SHEBANG + buffer.getvalue())
    output.chmod(0o755)
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "dist" / "opik-cipx.pyz")
    args = parser.parse_args()
    print(build(args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
