"""Child processes that die with this process, whichever thread starts them.

A process that starts etcd or a kube-apiserver and then dies hard (SIGKILL, a crash,
a CI job's time-out) must not leave them running: they hold ports, memory and CPU, and
the next run on the machine competes with them. The kernel offers that guarantee with
`prctl(PR_SET_PDEATHSIG)`, set in the child before exec: the child gets SIGKILL when
its parent dies. The kernel's "parent" is the *thread* that forked, though, so a child
started from a worker thread (`asyncio.to_thread`, an executor, a test restarting an
API server) would be killed as soon as that thread ends, long before the process does.

`spawn` therefore forks every child from one thread that lives as long as the process
(a daemon thread, started on first use): children die with the process, never with
the thread that asked for them. `die_with_parent` is the `preexec_fn` for processes
started on the event loop's thread (asyncio's own subprocess API), which lives as long.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import signal
import subprocess
import threading
from concurrent.futures import Future
from typing import Any, cast

_PR_SET_PDEATHSIG = 1

_Request = tuple[list[str], dict[str, Any], "Future[subprocess.Popen[bytes]]"]
_requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def die_with_parent(death_signal: int = signal.SIGKILL) -> None:
    """Runs in the child before exec: `death_signal` when the thread that forked it ends."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, death_signal)


def spawn(
    argv: list[str], *, death_signal: int = signal.SIGKILL, **popen: Any
) -> subprocess.Popen[bytes]:
    """`subprocess.Popen(argv, **popen)`, forked by the process-long spawner thread with
    `die_with_parent(death_signal)` (so `popen` may not carry a `preexec_fn` of its own).
    SIGTERM suits a child that has children of its own to stop on the way out. Errors
    of the Popen (a missing binary, say) are raised here, in the caller's thread."""
    if "preexec_fn" in popen:
        raise ValueError("spawn sets preexec_fn itself")
    done: Future[subprocess.Popen[bytes]] = Future()
    _requests.put(
        (list(argv), {**popen, "preexec_fn": lambda: die_with_parent(death_signal)}, done)
    )
    _ensure_spawner()
    return done.result()


def _ensure_spawner() -> None:
    global _spawner
    with _spawner_lock:
        if _spawner is None or not _spawner.is_alive():
            _spawner = threading.Thread(target=_serve, name="aviator-spawner", daemon=True)
            _spawner.start()


def _serve() -> None:
    while True:
        argv, popen, done = _requests.get()
        if not done.set_running_or_notify_cancel():
            continue
        try:
            child = subprocess.Popen(argv, **popen)
            done.set_result(cast("subprocess.Popen[bytes]", child))
        except BaseException as err:  # handed to the caller, who raises it
            done.set_exception(err)
