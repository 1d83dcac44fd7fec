"""What the box tells its user on the terminal, shared by `box up` and `box demo`.

A module of its own so that the command (cmd.py) and the demo (demo.py) both use it
without importing each other.
"""

from __future__ import annotations

from pathlib import Path


def say(text: str) -> None:
    print(f"[box] {text}", flush=True)


def print_access(kubeconfig: Path, workdir: Path) -> None:
    say("the box is up. Point kubectl at it with:")
    print(f"\n    export KUBECONFIG={kubeconfig}\n", flush=True)
    say(
        f"status: `aviator box status --workdir {workdir}`; "
        "Service addresses appear there as Services are created"
    )
