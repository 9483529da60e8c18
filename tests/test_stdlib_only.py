"""The runtime package imports nothing outside the standard library."""

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "opik_cipx"


def test_runtime_imports_are_stdlib_only():
    allowed = set(sys.stdlib_module_names) | {"opik_cipx", "__future__"}
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            bad += [f"{path.name}: {name}" for name in names if name.split(".")[0] not in allowed]
    assert bad == []
