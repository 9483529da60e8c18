"""Where the suite's CPU goes: `python -m pytest -p tests.cpu_usage [paths]` (docs/DEVELOPING.md, "Tests").

Wall durations (`--durations`) say where a loaded machine made the suite wait; this says what each
test cost: CPU of the pytest process running it (user + sys) and of the subprocesses it waited for
(daemons stopped, CLI runs, builds, the browser; a detached daemon nobody waits for is not
counted). Each process (each xdist worker) writes its rows to `CPU_USAGE_DIR` (default
`$TMPDIR/opik-cipx-cpu-usage`); the run ends with the totals and the files that cost most.
Not loaded by default: it is a measuring tool, not part of what a test proves.
"""

import collections
import os
import resource
import tempfile
import time
from pathlib import Path

import pytest

OUT = Path(os.environ.get("CPU_USAGE_DIR") or Path(tempfile.gettempdir()) / "opik-cipx-cpu-usage")
TOP = 25


def _cpu() -> tuple[float, float]:
    """(this process, its waited-for children): user + sys seconds."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


_rows: list[tuple[str, float, float, float]] = []


def pytest_sessionstart(session) -> None:
    if not hasattr(session.config, "workerinput"):  # the controller, or a run without workers
        OUT.mkdir(parents=True, exist_ok=True)
        for old in OUT.glob("*.tsv"):
            old.unlink()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    (own, children), wall = _cpu(), time.monotonic()
    try:
        return (yield)
    finally:
        (own_after, children_after), wall_after = _cpu(), time.monotonic()
        _rows.append((item.nodeid, own_after - own, children_after - children, wall_after - wall))


def pytest_sessionfinish(session) -> None:
    own, children = _cpu()
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [f"#process\t{own:.3f}\t{children:.3f}\t0\n"] if worker != "main" else []
    lines += [f"{nodeid}\t{a:.3f}\t{b:.3f}\t{w:.3f}\n" for nodeid, a, b, w in _rows]
    (OUT / f"{worker}.tsv").write_text("".join(lines))


def pytest_terminal_summary(terminalreporter) -> None:
    if hasattr(terminalreporter.config, "workerinput"):
        return
    tests, processes = [], []
    for path in OUT.glob("*.tsv"):
        for line in path.read_text().splitlines():
            name, own, children, wall = line.split("\t")
            (processes if name == "#process" else tests).append((name, float(own), float(children), float(wall)))
    own, children = _cpu()
    if processes:  # xdist workers: what each used, with what it waited for (they may not be reaped yet)
        children = sum(a + b for _, a, b, _ in processes)
    by_file: collections.Counter[str] = collections.Counter()
    for nodeid, a, b, _ in tests:
        by_file[nodeid.split("::")[0]] += a + b
    write = terminalreporter.write_line
    terminalreporter.section("CPU (user + sys, seconds)")
    write(f"whole run: {own + children:.1f} (pytest {own:.1f}, its workers and what they waited for {children:.1f})")
    write(f"in tests: {sum(a for _, a, _, _ in tests):.1f} in pytest processes, "
          f"{sum(b for _, _, b, _ in tests):.1f} in their subprocesses; {len(tests)} tests")
    if processes:
        outside = sum(a for _, a, _, _ in processes) - sum(a for _, a, _, _ in tests)
        write(f"workers outside tests (start, collection): {outside:.1f}")
    write(f"the {TOP} files that cost most:")
    for path, cpu in by_file.most_common(TOP):
        write(f"  {cpu:6.1f}  {path}")
