"""`python -m block.profiler profile ...`: the profile command alone.

For GPU machines that have torch but not the rest of Block's dependencies (pydantic, aiohttp):
this entry point imports only the profiler, the model catalogue and the error tree.
"""

from __future__ import annotations

import argparse
import sys

from block.profiler import commands


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m block.profiler")
    commands.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
