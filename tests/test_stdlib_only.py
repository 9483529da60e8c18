"""The runtime package imports nothing outside the standard library."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "opik_cipx"
ALLOWED = set(sys.stdlib_module_names) | {"opik_cipx", "__future__"}


def non_stdlib_imports(name: str, source: str | bytes) -> list[str]:
    """`name: module` for every absolute import in `source` outside the stdlib and our package."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules = [node.module or ""]
        else:
            continue
        bad += [f"{name}: {module}" for module in modules if module.split(".")[0] not in ALLOWED]
    return bad


def test_runtime_imports_are_stdlib_only():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        bad += non_stdlib_imports(path.name, path.read_text(encoding="utf-8"))
    assert bad == []
