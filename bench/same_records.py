#!/usr/bin/env python3
"""Whether two checkouts materialize the same spool lines: a check for a change meant to make the
materializer faster without changing what it writes.

Run from the repository root: `python3 bench/same_records.py OTHER_CHECKOUT` (e.g. a
`git worktree add /tmp/main main`). Each tree, in its own process, materializes every exchange of
the recorded corpus (a fresh Materializer per scenario) and the 200 calls of bench/claude_session.py's
growing session, with and without `capture_content`, and writes every record as a spool line;
the two outputs must be byte for byte the same. Exit status 0 when they are, 1 with the first
line that differs when not.
"""

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(tree: Path, out: Path) -> None:
    """Write the spool lines of the corpus and the growing session, materialized by `tree`, to `out`."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    from claude_session import captures, growing_session

    from opik_cipx.materialize.materializer import Materializer, MaterializerConfig
    from opik_cipx.materialize.pricing import load_price_table
    from opik_cipx.store.spool_lines import encode
    from tests.claude_code_corpus import SCENARIOS, exchanges

    prices = load_price_table()
    session = captures(growing_session(200, 20))
    with tempfile.TemporaryDirectory() as tmp, out.open("wb") as lines:
        for content in (True, False):
            config = MaterializerConfig("claude-code", content, 256 * 1024, Path(tmp) / "sessions",
                                        Path(tmp) / "none.json")
            scenarios = [[capture for _, capture in exchanges(scenario)] for scenario in SCENARIOS]
            for scenario in [*scenarios, session]:
                materializer = Materializer(config, prices)
                for capture in scenario:
                    lines.writelines(encode(record) for record in materializer.materialize(capture).records)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the checkout to compare this one with")
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0].resolve(), args.child[1])
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        outputs = []
        for index, tree in enumerate((ROOT, args.other.resolve())):
            out = Path(tmp) / f"{index}.jsonl"
            subprocess.run([sys.executable, __file__, str(args.other), "--child", str(tree), str(out)], check=True)
            outputs.append(out.read_bytes().splitlines())
    mine, theirs = outputs
    for number, (line, other) in enumerate(zip(mine, theirs, strict=False), start=1):
        if line != other:
            print(f"line {number} differs:\n  {ROOT}: {line[:300]!r}\n  {args.other}: {other[:300]!r}")
            return 1
    if len(mine) != len(theirs):
        print(f"{len(mine)} lines here, {len(theirs)} in {args.other}")
        return 1
    print(f"the same {len(mine)} spool lines ({sum(map(len, mine)) / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
