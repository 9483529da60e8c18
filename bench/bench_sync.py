#!/usr/bin/env python3
"""Hook latency benchmark: `opik-cipx sync` as Claude Code runs it, with the daemon already up.

Run from the repository root: `python3 bench/bench_sync.py [--runs N]`.

Builds the pyz into a temporary HOME, brings the daemon up with one `sync` (detached
supervisor, a free port, nothing touches the real ~/.claude or ~/.opik-cipx), then times N
runs of `python3 opik-cipx.pyz sync` with a recorded SessionStart payload on stdin (its cwd
set to this checkout, so the git look-ups run too): process start to exit, interpreter
start-up included. Also times the hook launcher on top of it, once finding the pyz in the
plugin tree and once running a plugin-only install's source (which checks the installed pyz is
a build of it). Prints median and p90 against the 300 ms target and tears everything down.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_MS = 300.0
HOOK = sorted((ROOT / "tests" / "fixtures" / "claude-code" / "simple").glob("hook_SessionStart_*.json"))[0]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed(argv: list[str], env: dict[str, str], stdin: bytes, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(argv, env=env, input=stdin, capture_output=True)
        out.append((time.perf_counter() - started) * 1000)
        if done.returncode != 0 or done.stderr:
            raise SystemExit(f"sync reported a problem: {done.stderr.decode(errors='replace')}")
    return out


def report(name: str, ms: list[float]) -> float:
    median = statistics.median(ms)
    verdict = "ok" if median < TARGET_MS else "OVER TARGET"
    print(f"{name:<28} median {median:6.1f} ms   p90 {pct(ms, 90):6.1f} ms   max {max(ms):6.1f} ms   "
          f"({len(ms)} runs; target median < {TARGET_MS:.0f} ms: {verdict})")
    return median


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        user = Path(tmp) / "user"
        cipx_home = user / ".opik-cipx"
        cipx_home.mkdir(parents=True)
        (cipx_home / "ports.json").write_text(json.dumps({"claude_code": free_port()}))
        pyz = cipx_home / "bin" / "opik-cipx"
        subprocess.run([sys.executable, str(ROOT / "build_zipapp.py"), "-o", str(pyz)], check=True,
                       capture_output=True)
        env = {key: value for key, value in os.environ.items()
               if not key.startswith(("CIPX_", "OPIK_", "CLAUDE_", "XDG_"))
               and key not in ("PYTHONPATH", "ANTHROPIC_BASE_URL")}
        env.update(HOME=str(user), CIPX_SUPERVISOR="detached")
        hook = json.dumps({**json.loads(HOOK.read_text()), "cwd": str(ROOT)}).encode()  # a real git checkout
        first = subprocess.run([sys.executable, str(pyz), "sync"], env=env, stdin=subprocess.DEVNULL,
                               capture_output=True, text=True)
        if first.returncode != 0:
            raise SystemExit(f"could not bring the daemon up: {first.stderr}")
        print(first.stdout.strip())
        try:
            sync_ms = timed([sys.executable, str(pyz), "sync"], env, hook, args.runs)
            launcher = ROOT / "scripts" / "opik-cipx-hook-launcher"
            plugin = Path(tmp) / "plugin"  # the launcher finds the installed pyz through the plugin tree
            (plugin / "bin").mkdir(parents=True)
            (plugin / "bin" / "opik-cipx").symlink_to(pyz)
            launcher_env = {**env, "CLAUDE_PLUGIN_ROOT": str(plugin), "CIPX_PYTHON": sys.executable}
            launcher_ms = timed(["/bin/sh", str(launcher), "SessionStart"], launcher_env, hook, args.runs)
            source = Path(tmp) / "plugin-source"  # a plugin-only install: the launcher runs the plugin's source,
            (source / "scripts").mkdir(parents=True)  # which checks the installed pyz is a build of it
            (source / "opik_cipx").symlink_to(ROOT / "opik_cipx")
            source_env = {**launcher_env, "CLAUDE_PLUGIN_ROOT": str(source)}
            timed(["/bin/sh", str(launcher), "SessionStart"], source_env, hook, 1)  # installs the build of it once
            source_ms = timed(["/bin/sh", str(launcher), "SessionStart"], source_env, hook, args.runs)
            print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpu(s)")
            median = report("sync (pyz, hook stdin)", sync_ms)
            report("hook launcher -> sync", launcher_ms)
            report("launcher -> plugin source", source_ms)
        finally:
            subprocess.run([sys.executable, str(pyz), "sync"], env={**env, "CIPX_DISABLED": "1"},
                           stdin=subprocess.DEVNULL, capture_output=True)
    return 0 if median < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
