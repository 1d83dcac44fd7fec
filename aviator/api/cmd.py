"""`aviator manifests`: write (or check) the generated CRD YAML and API reference."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aviator.api.crd import render_crd
from aviator.api.docs import update_reference


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--output", "-o", type=Path, help="write the CRD YAML here (default: standard output)"
    )
    parser.add_argument(
        "--docs",
        type=Path,
        help="also refresh the generated reference tables in this Markdown file (docs/api.md)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if --output (and --docs) differ from what would be generated",
    )


def _sync(path: Path, wanted: str, check: bool) -> bool:
    """Write `wanted` to `path` (or, with check, compare); True when up to date."""
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if current == wanted:
        return True
    if check:
        print(f"{path} is stale: run `make manifests`", file=sys.stderr)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(wanted, encoding="utf-8")
    return True


def run(args: argparse.Namespace) -> int:
    if args.check and args.output is None:
        print("--check needs --output PATH", file=sys.stderr)
        return 2
    ok = True
    if args.output is None:
        sys.stdout.write(render_crd())
    else:
        ok = _sync(args.output, render_crd(), args.check)
    if args.docs is not None:
        if not args.docs.exists():
            print(f"{args.docs} does not exist", file=sys.stderr)
            return 2
        current = args.docs.read_text(encoding="utf-8")
        try:
            wanted = update_reference(current)
        except ValueError as exc:
            print(f"{args.docs}: {exc}", file=sys.stderr)
            return 2
        ok = _sync(args.docs, wanted, args.check) and ok
    return 0 if ok else 1
