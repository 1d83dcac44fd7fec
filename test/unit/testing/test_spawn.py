"""`spawn`: a child started from a short-lived thread outlives that thread, and dies
with the process that started it, however that process ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from aviator.testing.spawn import spawn

# A parent that starts `sleep` from a worker thread, lets the thread end, reports the
# child's pid and whether it is still alive, then waits to be killed.
PARENT = textwrap.dedent(
    """
    import os, subprocess, sys, threading, time
    from aviator.testing.spawn import spawn

    children, tids = [], []

    def start():
        tids.append(threading.get_native_id())
        children.append(spawn(["sleep", "120"], stdin=subprocess.DEVNULL))

    worker = threading.Thread(target=start)
    worker.start()
    worker.join()
    # join() returns before the kernel is done with the thread: wait for its task to go
    # (its children's death signal is sent on the way out).
    while os.path.exists(f"/proc/self/task/{tids[0]}"):
        time.sleep(0.01)
    (child,) = children
    try:  # a signalled child takes a moment to die: give it one
        child.wait(1.0)
        alive = False
    except subprocess.TimeoutExpired:
        alive = True
    print(child.pid, alive, flush=True)
    time.sleep(120)
    """
)


def _gone(pid: int, within_s: float) -> bool:
    """Whether `pid` is gone (or a zombie nobody reaps: dead) within `within_s`."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def test_a_child_outlives_its_thread_and_dies_with_its_process() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=os.getcwd()
    )
    try:
        assert parent.stdout is not None
        pid_text, alive = parent.stdout.readline().split()
        child = int(pid_text)
        assert alive == "True", "the child died with the thread that asked for it"
        parent.send_signal(signal.SIGKILL)  # dies hard: no atexit, no cleanup
        parent.wait()
        assert _gone(child, 10.0), f"child {child} outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        if "child" in locals() and not _gone(child, 0):
            os.kill(child, signal.SIGKILL)


def test_errors_reach_the_caller() -> None:
    with pytest.raises(FileNotFoundError):
        spawn(["/nonexistent/aviator-no-such-binary"])
    with pytest.raises(ValueError, match="preexec_fn"):
        spawn(["true"], preexec_fn=lambda: None)


def test_many_threads_spawn_at_once() -> None:
    children: list[subprocess.Popen[bytes]] = []
    lock = threading.Lock()

    def start() -> None:
        child = spawn(["true"])
        with lock:
            children.append(child)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(children) == 8
    assert all(c.wait(30) == 0 for c in children)


# A parent that starts a child which, on SIGTERM, writes a file and exits (as a
# process with children of its own stops them), then waits to be killed.
TERMINATED_PARENT = textwrap.dedent(
    """
    import signal, subprocess, sys, time
    from aviator.testing.spawn import spawn

    child_code = (
        "import pathlib, signal, sys, time\\n"
        "def stop(*_):\\n"
        "    pathlib.Path(sys.argv[1]).write_text('stopped')\\n"
        "    sys.exit(0)\\n"
        "signal.signal(signal.SIGTERM, stop)\\n"
        "print('ready', flush=True)\\n"
        "time.sleep(120)\\n"
    )
    child = spawn(
        [sys.executable, "-c", child_code, sys.argv[1]],
        stdout=subprocess.PIPE,
        death_signal=signal.SIGTERM,
    )
    child.stdout.readline()  # its handler is in place
    print(child.pid, flush=True)
    time.sleep(120)
    """
)


def test_a_child_can_be_stopped_rather_than_killed_when_its_process_dies(
    tmp_path: os.PathLike[str],
) -> None:
    marker = os.path.join(tmp_path, "stopped")
    parent = subprocess.Popen(
        [sys.executable, "-c", TERMINATED_PARENT, marker],
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.getcwd(),
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone(child, 10.0), f"child {child} outlived its killed parent"
        with open(marker) as f:  # it ran its SIGTERM handler: it was stopped, not killed
            assert f.read() == "stopped"
    finally:
        parent.kill()
        parent.wait()
        if child and not _gone(child, 0):
            os.kill(child, signal.SIGKILL)
