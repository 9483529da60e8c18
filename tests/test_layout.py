"""The package layout reads as the data flow, and imports only run with it.

docs/ARCHITECTURE.md, "Layout": a module imports from the basics, from its own stage and from
stages before it; never from a later stage, never from `commands/` or an entry point. The
basics import only each other. A new top-level module has to be a basic or an entry point.
No class in the package is over `MAX_CLASS_LINES` lines, no function over `MAX_FUNCTION_LINES`
(docs/DEVELOPING.md, "Style"). Only `clock.py` reads the clocks or sleeps (`CLOCK_READS`); everything
else asks a `clock.Clock`, so a test can give it a clock of its own.
"""

import ast
import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "opik_cipx"
# The stages in the order a call flows through them; a stage may import from those before it.
STAGES = ("wire", "store", "materialize", "ledger", "ship", "views", "control", "commands")
BASICS = frozenset({"caps", "clock", "config", "home", "ids", "link", "logs", "outbound", "signals", "stats",
                    "telemetry", "urls", "worker"})
ENTRY_POINTS = frozenset({"cli", "daemon", "work", "__main__"})
MAX_CLASS_LINES = 400
MAX_FUNCTION_LINES = 80
# What reads the machine's clocks or waits on them; converting a known instant (`time.localtime`,
# `time.strftime`, `datetime.fromtimestamp`) is not a read and stays allowed everywhere.
CLOCK_READS = frozenset({
    *(f"time.{name}" for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter",
                                  "perf_counter_ns", "sleep")),
    "datetime.datetime.now", "datetime.datetime.utcnow", "datetime.datetime.today", "datetime.date.today",
})
CLOCK_MODULE = "opik_cipx.clock"
# What each process of the daemon leaves unimported at start: the wire none of the work side's,
# the work process not the dashboard (docs/ARCHITECTURE.md, "Imports at start").
NOT_AT_START = {
    "opik_cipx.daemon": ("opik_cipx.materialize", "opik_cipx.ledger.entry", "opik_cipx.ledger.store",
                         "opik_cipx.ship.shipper", "opik_cipx.views.dashboard", "opik_cipx.control.detached",
                         "urllib.request", "tomllib", "configparser", "importlib.resources", "uuid", "platform"),
    "opik_cipx.work": ("opik_cipx.views.dashboard", "opik_cipx.control.detached", "opik_cipx.daemon",
                       "urllib.request", "gzip", "tomllib", "configparser", "importlib.resources", "argparse",
                       # the materializer and the ledger's row builders until the first capture, the
                       # budget's feed without a cap
                       "opik_cipx.materialize.materializer", "opik_cipx.materialize.call",
                       "opik_cipx.materialize.pricing", "opik_cipx.materialize.attribution",
                       "opik_cipx.materialize.session_state", "opik_cipx.ledger.entry",
                       "opik_cipx.ledger.call_parts", "opik_cipx.ledger.budget_feed", "opik_cipx.wire.budget",
                       "opik_cipx.control", "uuid", "platform"),
}
# What a short command, and the settings every command loads, leave for the path that needs them.
COMMAND_NOT_AT_START = {
    "opik_cipx.config": ("tomllib", "uuid"),
    "opik_cipx.commands.status": ("tomllib", "uuid", "configparser", "plistlib", "shutil"),
}


def place(module: str) -> str:
    """The stage of `opik_cipx.<...>`: a stage name, "basics", "entry" or "unknown"."""
    parts = module.split(".")
    if parts[0] != "opik_cipx":
        return "outside"
    if len(parts) == 1:
        return "basics"  # the package itself: __version__
    if parts[1] in STAGES:
        return parts[1]
    if parts[1] in BASICS:
        return "basics"
    if parts[1] in ENTRY_POINTS:
        return "entry"
    return "unknown"


def rank(where: str) -> int:
    return -1 if where == "basics" else STAGES.index(where)


# The checks below walk every module of the package; parsed once per process, not once per check.
parse = functools.cache(ast.parse)


def imported_modules(module: str, source: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `source`, relative ones resolved.

    `from a import b` yields `a.b` when `b` is a submodule and `a` otherwise; both place the
    same way unless `a` is the package root, where the submodule is what counts.
    """
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.append((node.lineno, candidate if _is_module(candidate) else base))
    return out


def _is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(module: str, source: str, is_package: bool = False) -> list[str]:
    """Why each import of `module` runs against the flow (empty when none does)."""
    here = place(module)
    if here == "unknown":
        return [f"{module}: a top-level module must be a basic ({', '.join(sorted(BASICS))}) or an "
                f"entry point ({', '.join(sorted(ENTRY_POINTS))}); put it in a stage package"]
    problems = []
    for line, target in imported_modules(module, source, is_package):
        there = place(target)
        if there == "outside" or here == "entry":
            continue  # the stdlib; entry points put the stages together
        if there == "entry":
            why = None if here == "commands" and target in ("opik_cipx.daemon", "opik_cipx.work") else "an entry point"
        elif there == "unknown":
            why = "a module outside every stage"
        elif there == "commands" and here != "commands":
            why = "a subcommand"
        elif here == "basics" and there != "basics":
            why = f"the later stage `{there}` (basics import only basics)"
        elif here != "basics" and rank(there) > rank(here):
            why = f"the later stage `{there}`"
        else:
            why = None
        if why:
            problems.append(f"{module}:{line} imports {target}: {why}")
    return problems


def package_modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def test_imports_follow_the_flow():
    problems = []
    for module, path in package_modules():
        problems += violations(module, path.read_text(encoding="utf-8"), path.name == "__init__.py")
    assert problems == []


def test_every_stage_is_a_package_with_a_docstring():
    for stage in STAGES:
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), f"{stage}/ is not a package"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{stage}/__init__.py says nothing about the stage"


@pytest.mark.parametrize("module, source", [
    ("opik_cipx.wire.gateway", "from opik_cipx.materialize.pricing import price_call"),
    ("opik_cipx.wire.gateway", "from ..materialize import pricing"),
    ("opik_cipx.materialize.materializer", "from opik_cipx.control.claude_settings import claude_json_path"),
    ("opik_cipx.store.spool", "def later():\n    from opik_cipx.ship import shipper"),
    ("opik_cipx.config", "from opik_cipx.materialize.pricing import load_price_table"),
    ("opik_cipx.control.lifecycle", "from opik_cipx.commands import status"),
    ("opik_cipx.views.viewer", "import opik_cipx.daemon"),
    ("opik_cipx.helpers", "import json"),
])
def test_a_backwards_import_is_caught(module, source):
    assert violations(module, source)


@pytest.mark.parametrize("module, source", [
    ("opik_cipx.materialize.materializer", "from opik_cipx.wire.capture import Capture"),
    ("opik_cipx.materialize.call_kind", "from .attribution.system import BILLING_HEADER"),
    ("opik_cipx.ship.shipper", "from opik_cipx import __version__\nfrom opik_cipx.store.spool import Spool"),
    ("opik_cipx.commands.status", "from opik_cipx.control import lifecycle"),
    ("opik_cipx.daemon", "from opik_cipx.views.admin import AdminHandler"),
])
def test_imports_with_the_flow_pass(module, source):
    assert violations(module, source) == []


def test_every_reference_to_the_architecture_names_a_section():
    """Every section of docs/ARCHITECTURE.md that code, tests or docs cite by name exists."""
    root = PACKAGE.parent
    headings = {
        line.lstrip("#").strip()
        for line in (root / "docs" / "ARCHITECTURE.md").read_text().splitlines()
        if line.startswith("#")
    }
    pattern = re.compile(r'ARCHITECTURE\.md[,:]?\s+(?:\(|section\s+)?"([^"]+)"')
    sources = [*PACKAGE.rglob("*.py"), *(root / "tests").rglob("*.py"), *(root / "docs").glob("*.md"),
               root / "README.md"]
    missing = [
        f"{path.relative_to(root)}: {name}"
        for path in sources
        for name in pattern.findall(path.read_text(encoding="utf-8"))
        if name not in headings
    ]
    assert missing == []
    assert len(headings) > 5


def oversized(source: str) -> list[str]:
    """`line name: N lines` for each class over `MAX_CLASS_LINES` and each function (methods and
    nested functions included) over `MAX_FUNCTION_LINES` in `source`; a definition's lines run
    from its first decorator to its last line, comments and docstring included."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                first = min([child.lineno, *(d.lineno for d in child.decorator_list)])
                lines = child.end_lineno - first + 1
                limit = MAX_CLASS_LINES if isinstance(child, ast.ClassDef) else MAX_FUNCTION_LINES
                if lines > limit:
                    out.append(f"{first} {name}: {lines} lines (at most {limit})")
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(parse(source), "")
    return out


def test_no_class_or_function_is_too_long():
    problems = []
    for module, path in package_modules():
        problems += [f"{module}:{problem}" for problem in oversized(path.read_text(encoding="utf-8"))]
    assert problems == []


def _function(name: str, lines: int, indent: str = "") -> str:
    """A function of exactly `lines` lines."""
    return f"{indent}def {name}():\n" + f"{indent}    pass\n" * (lines - 1)


def _class(name: str, lines: int) -> str:
    """A class of exactly `lines` lines (methods of at most 10 lines)."""
    body, left = [], lines - 1
    while left:
        body.append(_function(f"m{len(body)}", min(left, 10), "    "))
        left -= min(left, 10)
    return f"class {name}:\n" + "".join(body)


def test_size_limits_count_from_the_decorator_to_the_last_line():
    classes, functions = f"(at most {MAX_CLASS_LINES})", f"(at most {MAX_FUNCTION_LINES})"
    assert oversized(_class("Big", MAX_CLASS_LINES) + _function("long", MAX_FUNCTION_LINES)) == []
    assert oversized(_class("Big", MAX_CLASS_LINES + 1)) == [f"1 Big: {MAX_CLASS_LINES + 1} lines {classes}"]
    decorated = "@decorated\n" + _function("long", MAX_FUNCTION_LINES)
    assert oversized(decorated) == [f"1 long: {MAX_FUNCTION_LINES + 1} lines {functions}"]
    method = "class Small:\n" + _function("long", MAX_FUNCTION_LINES + 1, "    ")
    assert oversized(method) == [f"2 Small.long: {MAX_FUNCTION_LINES + 1} lines {functions}"]
    nested = "def outer():\n" + _function("inner", MAX_FUNCTION_LINES + 1, "    ")
    assert oversized(nested) == [f"1 outer: {MAX_FUNCTION_LINES + 2} lines {functions}",
                                 f"2 outer.inner: {MAX_FUNCTION_LINES + 1} lines {functions}"]


def clock_reads(source: str) -> list[str]:
    """`line name` of each use of a `CLOCK_READS` function in `source`, called or passed on, by
    whatever name an import gave it (`import time as t`, `from time import monotonic`)."""
    tree = parse(source)
    bound: dict[str, str] = {}  # a name an import binds -> the dotted name it stands for
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]  # `import a.b` binds `a`; `import a.b as x` binds x to a.b
                bound[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return bound.get(node.id)
        if isinstance(node, ast.Attribute):
            base = dotted(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    found = [(node.lineno, node.col_offset, name) for node in ast.walk(tree)
             if isinstance(node, (ast.Name, ast.Attribute)) and (name := dotted(node)) in CLOCK_READS]
    return [f"{line} {name}" for line, _, name in sorted(found)]


def test_only_clock_py_reads_the_clocks():
    problems = []
    for module, path in package_modules():
        if module != CLOCK_MODULE:
            problems += [f"{module}:{read}" for read in clock_reads(path.read_text(encoding="utf-8"))]
    assert problems == [], "read the clocks through opik_cipx.clock (a Clock, SYSTEM by default)"


@pytest.mark.parametrize("source, found", [
    ("import time\ntime.sleep(1)", ["2 time.sleep"]),
    ("import time as t\nstarted = t.perf_counter()", ["2 time.perf_counter"]),
    ("from time import monotonic as mono\ndef f():\n    return mono()", ["3 time.monotonic"]),
    ("import time\nthreading.Timer(1, f, kwargs={'clock': time.time_ns})", ["2 time.time_ns"]),
    ("import datetime\ndatetime.datetime.now(datetime.UTC)", ["2 datetime.datetime.now"]),
    ("from datetime import date, datetime\ndate.today()\ndatetime.utcnow()",
     ["2 datetime.date.today", "3 datetime.datetime.utcnow"]),
    ("import time\ntime.strftime('%Y-%m-%d', time.localtime(0))", []),
    ("from datetime import UTC, datetime\ndatetime.fromtimestamp(0, UTC)", []),
    ("from datetime import time as dt_time\ndt_time(1, 2)", []),
    ("from opik_cipx.clock import SYSTEM\nSYSTEM.time()\nSYSTEM.sleep(1)", []),
])
def test_a_direct_clock_read_is_found_under_any_name(source, found):
    assert clock_reads(source) == found


@pytest.mark.parametrize("entry", sorted(NOT_AT_START | COMMAND_NOT_AT_START))
def test_each_daemon_process_and_command_imports_only_what_its_start_needs(entry):
    left = (NOT_AT_START | COMMAND_NOT_AT_START)[entry]
    loaded = subprocess.run([sys.executable, "-c", f"import sys, {entry}; print(*sys.modules)"],
                            capture_output=True, text=True, check=True).stdout.split()
    assert entry in loaded
    assert [name for name in loaded if name.startswith(tuple(f"{out}." for out in left)) or name in left] == []
