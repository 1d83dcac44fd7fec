"""`python -m aviator.box ...`: the same as `aviator box ...`, loading only the box."""

from __future__ import annotations

import argparse
import sys

from aviator.box import cmd
from aviator.runtime.crashtrace import trace_crashes


def main(argv: list[str] | None = None) -> int:
    trace_crashes()
    parser = argparse.ArgumentParser(prog="aviator box", description=cmd.__doc__)
    cmd.add_arguments(parser)
    return cmd.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
