"""The one-file executable: build `opik-cipx` (a zipapp) from the package's source tree.

Reproducible: files are added in sorted order with a fixed timestamp and mode, so the same
source tree, building interpreter and interpreter line always give the same bytes. The archive
comment names the source it was built from (`source_digest`), so `install` can tell cheaply
whether an installed copy is a build of the source at hand without building it again.

Each module goes in twice: its source, and beside it (`cli.py`, `cli.pyc`) its code compiled by
the building interpreter, as an unchecked hash-based .pyc (PEP 552). zipimport loads that instead
of compiling the source on every run (a third of the status line's time); an interpreter of
another version finds another magic number in it and compiles the source as before. Code
objects name their file relative to the archive (`opik_cipx/cli.py`).

The Claude Code hook launcher (`scripts/opik-cipx-hook-launcher` beside the package) goes in too,
under the same name: `install` copies it out for the hooks of an install.sh user
(control/install.py), whose checkout may be gone by then. The digest covers it.
"""

import hashlib
import io
import stat
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import zipfile

DEFAULT_INTERPRETER = "/usr/bin/env python3"
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
ENTRY = b"import sys\nfrom opik_cipx.cli import main\nsys.exit(main())\n"
COMMENT_PREFIX = b"opik-cipx source sha256:"
# zlib's default: level 9 made a build (every first `sync` from a source tree) 0.17 s slower, the
# deflating taking 4x as long, for an executable 0.7 % smaller.
COMPRESS_LEVEL = 6


LAUNCHER = "scripts/opik-cipx-hook-launcher"  # beside the package in a source tree; in the archive the same


def package_files(package: Path) -> list[Path]:
    """The files of the package that go into the executable, sorted."""
    return sorted(
        p for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".json")
    )


def extra_files(package: Path) -> list[tuple[str, Path]]:
    """(archive name, path) of what goes in beside the package: the hook launcher, when the tree has it."""
    launcher = package.parent / LAUNCHER
    return [(LAUNCHER, launcher)] if launcher.is_file() else []


def source_digest(package: Path) -> str:
    """SHA-256 over the relative path and bytes of every packaged file: the identity of a source tree."""
    digest = hashlib.sha256()
    named = [(path.relative_to(package).as_posix(), path) for path in package_files(package)]
    for name, path in named + extra_files(package):
        data = path.read_bytes()
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def source_comment(package: Path) -> bytes:
    """The archive comment a build of `package` ends with."""
    return COMMENT_PREFIX + source_digest(package).encode()


def _add(archive: "zipfile.ZipFile", name: str, data: bytes) -> None:
    import zipfile

    info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    archive.writestr(info, data, compresslevel=COMPRESS_LEVEL)


def compiled(name: str, source: bytes) -> bytes:
    """`source` compiled by this interpreter as an unchecked hash-based .pyc, its code naming `name`."""
    import importlib.util
    import marshal

    code = compile(source, name, "exec", dont_inherit=True)
    unchecked_hash = (0b01).to_bytes(4, "little")  # PEP 552 flags: hash-based, source not checked
    return importlib.util.MAGIC_NUMBER + unchecked_hash + importlib.util.source_hash(source) + marshal.dumps(code)


def build_bytes(package: Path, interpreter: str = DEFAULT_INTERPRETER) -> bytes:
    """The executable built from `package` (the `opik_cipx` directory), run by `interpreter`."""
    import zipfile  # only when building: `sync` imports this module on every session start

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        _add(archive, "__main__.py", ENTRY)
        for path in package_files(package):
            name, data = f"{package.name}/{path.relative_to(package).as_posix()}", path.read_bytes()
            _add(archive, name, data)
            if path.suffix == ".py":
                _add(archive, name + "c", compiled(name, data))
        for name, path in extra_files(package):
            _add(archive, name, path.read_bytes())
        archive.comment = source_comment(package)
    return with_interpreter(buffer.getvalue(), interpreter)


def with_interpreter(data: bytes, interpreter: str) -> bytes:
    """`data` (a zipapp, with or without a `#!` line) starting with `#!<interpreter>` instead.

    Zip readers locate entries from the end of the file, so the first line may change length.
    """
    if data.startswith(b"#!"):
        data = data[data.index(b"\n") + 1:]
    return b"#!" + interpreter.encode() + b"\n" + data


def build(output: Path, package: Path, interpreter: str = DEFAULT_INTERPRETER) -> Path:
    """Write the executable built from `package` to `output` (mode 0755)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(build_bytes(package, interpreter))
    output.chmod(0o755)
    return output
