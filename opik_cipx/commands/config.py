"""`opik-cipx config --example`: every setting of `config.toml`, with its help and default.

Generated from `config.OPTIONS`, so it is always the list the code reads; README carries a
copy that a test keeps equal to it.
"""

import argparse

from opik_cipx.config import Settings, example_toml


def configure(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--example", action="store_true",
                      help="print a config.toml with every setting commented out at its default")
    parser.set_defaults(on_config_error=lambda args, exc: run(args, None))


def run(args: argparse.Namespace, settings: Settings | None) -> int:
    print(example_toml(), end="")
    return 0
