"""A process's Python stacks on a fatal signal.

A crash in a C extension (an event loop, a compiler binding) kills the process with no
Python traceback; `faulthandler` prints every thread's stack to the process's own
stderr first, so the component's log says where it was. Every entry point
(`aviator ...`, `python -m aviator.box ...`) calls `trace_crashes` first.
"""

from __future__ import annotations

import faulthandler
import sys


def trace_crashes() -> None:
    """On a fatal signal, print every thread's Python stack to the process's stderr."""
    if not faulthandler.is_enabled() and sys.__stderr__ is not None:
        faulthandler.enable(file=sys.__stderr__)  # the process's own stderr, not a wrapper
