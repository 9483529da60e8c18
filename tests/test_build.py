"""The zipapp: reproducible bytes, compressed, stdlib-only, and every subcommand runs from it."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from opik_cipx.cli import COMMANDS
from tests.conftest import REPO
from tests.test_stdlib_only import non_stdlib_imports


def build(output: Path) -> Path:
    result = subprocess.run([sys.executable, str(REPO / "build_zipapp.py"), "-o", str(output)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(output)
    return output


@pytest.fixture
def pyz(built_pyz: Path) -> Path:
    """The run's build of this tree (`tests.lifecycle_helpers.built_pyz`, `build_zipapp.py` as above): read only."""
    return built_pyz


def test_same_tree_gives_the_same_bytes(pyz, tmp_path):
    again = build(tmp_path / "again" / "opik-cipx.pyz")
    assert again.read_bytes() == pyz.read_bytes()


def test_shebang_compression_and_fixed_metadata(pyz):
    data = pyz.read_bytes()
    assert data.startswith(b"#!/usr/bin/env python3\n")
    assert pyz.stat().st_mode & 0o111
    with zipfile.ZipFile(pyz) as archive:
        infos = archive.infolist()
        names = [info.filename for info in infos]
        assert names[0] == "__main__.py" and "opik_cipx/cli.py" in names
        assert not [n for n in names if "__pycache__" in n]
        sources = {n for n in names if n.endswith(".py") and n != "__main__.py"}
        assert {n for n in names if n.endswith(".pyc")} == {n + "c" for n in sources}  # each module compiled
        assert all(info.compress_type == zipfile.ZIP_DEFLATED for info in infos)
        assert {info.date_time for info in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_pyz_is_stdlib_only(pyz):
    bad = []
    with zipfile.ZipFile(pyz) as archive:
        for name in archive.namelist():
            if name.endswith(".py"):
                bad += non_stdlib_imports(name, archive.read(name))
    assert bad == []


def test_every_subcommand_runs_from_the_pyz(pyz, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CIPX_HOME": str(tmp_path / "h")}
    version = subprocess.run([sys.executable, str(pyz), "--version"], capture_output=True, text=True, env=env)
    assert version.returncode == 0 and version.stdout.startswith("opik-cipx ")
    for command in COMMANDS:
        result = subprocess.run([sys.executable, str(pyz), command, "--help"], capture_output=True, text=True,
                                env=env, timeout=30)
        assert result.returncode == 0, (command, result.stderr)
        assert f"opik-cipx {command}" in result.stdout
    status = subprocess.run([sys.executable, str(pyz), "status"], capture_output=True, text=True, env=env, timeout=30)
    assert status.returncode == 0 and "not running" in status.stdout


def test_interpreter_line_and_the_source_it_was_built_from(pyz, tmp_path):
    from opik_cipx.control import zipapp

    custom = tmp_path / "custom.pyz"
    result = subprocess.run([sys.executable, str(REPO / "build_zipapp.py"), "-o", str(custom), "-p",
                             "/opt/python 3.12/bin/python3.12"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    data = custom.read_bytes()
    assert data.startswith(b"#!/opt/python 3.12/bin/python3.12\n")
    assert data.split(b"\n", 1)[1] == pyz.read_bytes().split(b"\n", 1)[1]
    with zipfile.ZipFile(custom) as archive:
        assert archive.comment == zipapp.source_comment(REPO / "opik_cipx")
    swapped = tmp_path / "swapped.pyz"
    swapped.write_bytes(zipapp.with_interpreter(data, sys.executable))
    version = subprocess.run([sys.executable, str(swapped), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("opik-cipx ")


def run_in(pyz: Path, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(pyz)!r}); {code}"],
                          capture_output=True, text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})


def test_modules_load_compiled_and_another_interpreters_build_falls_back_to_the_source(pyz, tmp_path):
    loaded = run_in(pyz, "import opik_cipx.cli as m; print(m.__file__)")
    assert loaded.returncode == 0 and loaded.stdout.strip() == f"{pyz}/opik_cipx/cli.pyc", loaded.stderr
    foreign = tmp_path / "foreign.pyz"  # as if built by another Python version: another magic number
    with zipfile.ZipFile(pyz) as source, zipfile.ZipFile(foreign, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            out.writestr(info, b"\x00\x00" + data[2:] if info.filename.endswith(".pyc") else data)
    loaded = run_in(foreign, "import opik_cipx.cli as m; print(m.__file__)")
    assert loaded.returncode == 0 and loaded.stdout.strip() == f"{foreign}/opik_cipx/cli.py", loaded.stderr
    version = subprocess.run([sys.executable, str(foreign), "--version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and version.stdout.startswith("opik-cipx ")
