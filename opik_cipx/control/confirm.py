"""The confirmation step of destructive commands (`purge`, `uninstall`)."""

import sys


def confirmed(command: str, consequences: str, question: str) -> bool:
    """Ask `question` after stating `consequences`; refuse outright when stdin is not a terminal."""
    if not sys.stdin.isatty():
        print(f"opik-cipx: {command} needs confirmation; re-run with --yes to proceed without a prompt.",
              file=sys.stderr)
        return False
    print(consequences)
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")
