"""Writing a graceful GOAWAY for a pod's server on one of its connections (the I/O half
of goaway.py).

The agent cannot speak on a socket it does not hold, so it borrows the pod's own: the
socket's inode (sock_diag names it) is looked up among the file descriptors of the
processes in the pod's network namespace (/proc/<pid>/fd, hostPID), and that
descriptor is duplicated into the agent with pidfd_getfd(2) (Linux 5.6; it needs
ptrace access to the process: CAP_SYS_PTRACE). On the copy, right before the write,
the program's view of the server's bytes is read, then the send queue (SIOCOUTQ) and
the upper-layer protocol (TCP_ULP), then the program's view again; `goaway.refusal`
decides. The frame is written with MSG_DONTWAIT (17 bytes into an empty send queue:
all or, on EAGAIN, nothing) and the copy is closed: the pod's descriptor and its
connection are untouched otherwise.

What is left: a server thread that starts a frame in one write and ends it in another
could write its first part between the last check and the agent's write (a window of
microseconds); servers that write whole frames per write (grpcio, and most servers for
frames that fit their buffer) cannot be split. A server whose threads write to one
connection without a lock would corrupt its own frames anyway.
"""

from __future__ import annotations

import ctypes
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path

from aviator.agent.handoff import goaway

log = logging.getLogger(__name__)

SENT = "sent"
NO_OWNER = "no-owner"  # no process of the namespace holds the socket (or it is gone)
_SYS_PIDFD_GETFD = 438  # the same number on every architecture
_SIOCOUTQ = 0x5411  # TIOCOUTQ: bytes sent and not acknowledged
_TCP_ULP = 31


def owner(netns: int, inode: int, proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """(pid, fd) of a process in the network namespace `netns` (inode) whose
    descriptor `fd` is the socket with inode `inode`; None if there is none."""
    link = f"socket:[{inode}]"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino != netns:
                continue
            fds = os.listdir(entry / "fd")
        except OSError:
            continue  # exited, or a kernel thread
        for fd in fds:
            try:
                if os.readlink(entry / "fd" / fd) == link:
                    return int(entry.name), int(fd)
            except OSError:
                continue
    return None


class Owners:
    """`owner`, remembered per socket: a connection that is mid-frame at one look is
    looked at again a moment later, and a scan reads every process's /proc entries.
    A remembered owner that no longer holds the socket is looked up again."""

    def __init__(self, find: Callable[[int, int], tuple[int, int] | None] = owner) -> None:
        self._find = find
        self._known: dict[tuple[int, int], tuple[int, int]] = {}

    def __call__(self, netns: int, inode: int) -> tuple[int, int] | None:
        key = (netns, inode)
        held = self._known.get(key)
        if held is not None and _holds(held, inode):
            return held
        self._known.pop(key, None)
        if len(self._known) > 4096:  # connections long gone
            self._known.clear()
        held = self._find(netns, inode)
        if held is not None:
            self._known[key] = held
        return held


def _holds(held: tuple[int, int], inode: int, proc: Path = Path("/proc")) -> bool:
    try:
        return os.readlink(proc / str(held[0]) / "fd" / str(held[1])) == f"socket:[{inode}]"
    except OSError:
        return False


def borrow(pid: int, fd: int) -> int:
    """A descriptor of ours for process `pid`'s descriptor `fd` (close it when done)."""
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        got = int(libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0))
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"pidfd_getfd({pid}, {fd}): {os.strerror(err)}")
        return got
    finally:
        os.close(pidfd)


def send_goaway(
    netns: int,
    inode: int,
    protocol: str | None,
    server_cut: Callable[[], int | None],
    find: Callable[[int, int], tuple[int, int] | None] = owner,
) -> str:
    """Write the graceful GOAWAY on the pod's socket `inode` if `goaway.refusal` allows
    it now; returns SENT, NO_OWNER or the refusal."""
    held = find(netns, inode)
    if held is None:
        return NO_OWNER
    fd = borrow(*held)
    if os.fstat(fd).st_ino != inode:
        os.close(fd)
        return NO_OWNER  # the descriptor was closed and reused since the scan
    with socket.socket(fileno=fd) as sock:  # closes our copy only
        first = server_cut()
        outq = struct.unpack("i", fcntl.ioctl(fd, _SIOCOUTQ, b"\0" * 4))[0]
        ulp = sock.getsockopt(socket.IPPROTO_TCP, _TCP_ULP, 16)
        why = goaway.refusal(
            protocol=protocol, server_cuts=(first, server_cut()), ulp=ulp, outq=outq
        )
        if why is not None:
            return why
        try:
            n = sock.send(goaway.GRACEFUL, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return goaway.SEND_QUEUE
        if n != len(goaway.GRACEFUL):  # cannot happen with an empty send queue
            log.error("GOAWAY on socket %d: %d of %d bytes written", inode, n, len(goaway.GRACEFUL))
        return SENT
