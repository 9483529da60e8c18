#!/usr/bin/env python3
"""The materializer's cost in instructions (valgrind's callgrind): load-independent figures for a
change too small for wall or thread time on a shared machine.

Run from the repository root: `python3 bench/bench_instructions.py [--tree DIR ...]`.
Each tree (default: this checkout; another is a checkout of an older commit, e.g. a
`git worktree add /tmp/before X`) is measured in its own process under callgrind, with
`PYTHONHASHSEED=0`, counting instructions only while `sys.call_tracing` runs (callgrind's
`--toggle-collect`: the measured work is called through it, everything else is not counted):
- session: calls 191-200 of bench/claude_session.py's growing session (84 KB -> 1.73 MB over 200
  calls), after calls 1-190 went through the same materializer: materialize and the spool
  encoding of each record (`encode` alone on a second line);
- corpus: every Messages API exchange of the recorded corpus (71 captures), a fresh Materializer
  per scenario, after one unmeasured pass over the corpus (module caches warm): materialize and
  encode (`encode` alone on a second line).
A run takes a few minutes per tree.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURES = ("session", "session-encode", "corpus", "corpus-encode")


def child(tree: Path, measure: str) -> None:
    """Do the work of `measure` with `tree`'s modules, the measured part through `sys.call_tracing`."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    from claude_session import captures, growing_session

    from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
    from opik_cipx.materialize.pricing import load_price_table
    from opik_cipx.store.spool_lines import encode
    from tests.claude_code_corpus import SCENARIOS, exchanges

    prices = load_price_table()
    encode_only = measure.endswith("-encode")

    def both(materializer, capture) -> None:
        for record in materializer.materialize(capture).records:
            encode(record)

    def encoded(materializer, capture) -> None:
        for record in materializer.materialize(capture).records:
            sys.call_tracing(encode, (record,))

    def measured(materializer, capture) -> None:
        if encode_only:
            encoded(materializer, capture)
        else:
            sys.call_tracing(both, (materializer, capture))

    with tempfile.TemporaryDirectory() as tmp:
        config = MaterializerConfig("claude-code", True, 256 * 1024, Path(tmp) / "sessions", Path(tmp) / "none.json")
        if measure.startswith("session"):
            session = captures(growing_session(200, 20))
            materializer = Materializer(config, prices)
            for capture in session[:190]:
                both(materializer, capture)
            for capture in session[190:]:
                measured(materializer, capture)
            return
        corpus = [[c for _, c in exchanges(s) if c.path.startswith("/v1/messages")] for s in SCENARIOS]
        for scenario in corpus:
            materializer = Materializer(config, prices)
            for capture in scenario:
                both(materializer, capture)
        for scenario in corpus:
            materializer = Materializer(config, prices)
            for capture in scenario:
                measured(materializer, capture)


def instructions(tree: Path, measure: str) -> int:
    """Instructions counted in `measure` for `tree` (a child process under callgrind)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        command = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=sys_call_tracing",
                   f"--callgrind-out-file={out}", sys.executable, __file__, "--child", measure, "--tree", str(tree)]
        subprocess.run(command, check=True, env=dict(os.environ, PYTHONHASHSEED="0"), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        for line in out.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in callgrind's output for {measure} on {tree}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", type=Path, help="a checkout to measure (repeatable)")
    parser.add_argument("--child", choices=MEASURES, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=MEASURES, action="append", help="measure only this (repeatable)")
    args = parser.parse_args()
    trees = [tree.resolve() for tree in args.tree or [ROOT]]
    if args.child:
        child(trees[0], args.child)
        return 0
    for tree in trees:
        for measure in args.only or MEASURES:
            print(f"{tree}  {measure:15} {instructions(tree, measure) / 1e6:8.1f} M instructions", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
