"""The `aviator` command: one console script, one subcommand per component.

Each subcommand lives in its component's package as a module with two functions,
`add_arguments(parser)` and `run(args) -> int`, imported only when chosen so that
`aviator agent` never pays for the controller's imports and vice versa.

A fatal signal prints every thread's Python stack first (aviator.runtime.crashtrace).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

from aviator import __version__
from aviator.runtime.crashtrace import trace_crashes

# name -> (module implementing it, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "controller": ("aviator.controller.cmd", "run the policy controller"),
    "agent": ("aviator.agent.cmd", "run the per-node latency agent"),
    "box": ("aviator.box.cmd", "run a cluster in a box on this machine (the demo)"),
    "controlplane": ("aviator.testing.cmd", "start a local kube-apiserver + etcd + controllers"),
    "manifests": ("aviator.api.cmd", "generate the AviatorPolicy CRD YAML"),
}


def _load(module: str) -> ModuleType | None:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name == module:
            return None
        raise


def _chosen(argv: list[str]) -> str | None:
    """The subcommand named on the command line, if any (the first non-option word)."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in SUBCOMMANDS else None
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """A parser that imports only the chosen subcommand's module, so one component's
    import error (or weight) never affects another's command line."""
    chosen = _chosen(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="aviator", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aviator {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            impl = _load(module)
            if impl is not None:
                impl.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    trace_crashes()
    args = build_parser(argv).parse_args(argv)
    impl = _load(args._module)
    if impl is None:
        print(f"aviator {args.command}: not implemented yet", file=sys.stderr)
        return 2
    code: int = impl.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
