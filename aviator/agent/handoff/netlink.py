"""Talking NETLINK_SOCK_DIAG inside a pod's network namespace (the I/O half of sockdiag).

A socket stays in the network namespace it was created in, and sock_diag answers
about (and destroys) only sockets of its own socket's namespace. So the netlink socket
is created by a short-lived thread that first joins the target namespace with
`setns(fd, CLONE_NEWNET)` (libc through ctypes: Python 3.11 has no os.setns); only that
thread switches, and it ends right after. The namespace is found by its inode (what
the BPF program records per connection) among /proc/<pid>/ns/net.

Destroying needs CAP_NET_ADMIN over the target namespace (the agent's, in the initial
user namespace, covers every pod's) and a kernel with CONFIG_INET_DIAG_DESTROY.
"""

from __future__ import annotations

import ctypes
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aviator.agent.bpf.iterend import KernelEnder
from aviator.agent.handoff import sockdiag
from aviator.agent.handoff.sockdiag import DiagSocket

_CLONE_NEWNET = 0x40000000
_RECV_BYTES = 1 << 16
T = TypeVar("T")


def netns_path(inode: int, proc: Path = Path("/proc")) -> Path | None:
    """A /proc/<pid>/ns/net of the namespace with this inode (ours first); None if no
    process lives in it any more."""
    own = proc / "self" / "ns" / "net"
    try:
        if os.stat(own).st_ino == inode:
            return own
    except OSError:
        pass
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        path = entry / "ns" / "net"
        try:
            if os.stat(path).st_ino == inode:
                return path
        except OSError:
            continue  # exited, or a kernel thread
    return None


def _new_socket() -> socket.socket:
    return socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, sockdiag.NETLINK_SOCK_DIAG
    )


def in_netns(ns: Path, make: Callable[[], T]) -> T:
    """`make()` run by a thread inside the namespace `ns` (a /proc/.../ns/net): what it
    creates (a socket, a BPF iterator) belongs to that namespace for good."""
    if ns == Path("/proc/self/ns/net"):
        return make()
    result: list[T | BaseException] = []

    def enter_and_make() -> None:
        try:
            fd = os.open(ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                if libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result.append(make())
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    # This thread's namespace is never restored: it ends here, and nothing else runs on it.
    thread = threading.Thread(target=enter_and_make, name="netns-enter", daemon=True)
    thread.start()
    thread.join()
    outcome = result[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class SockDiag:
    """Dump and destroy TCP sockets through one netlink socket (blocking calls); with a
    `KernelEnder`, end a quiet one in one step inside the kernel."""

    def __init__(
        self, sock: socket.socket, *, ns: Path | None = None, ender: KernelEnder | None = None
    ) -> None:
        self._sock = sock
        self._seq = 0
        self._ns = ns
        self._ender = ender

    @classmethod
    def in_netns(cls, ns: Path, ender: KernelEnder | None = None) -> SockDiag:
        """sock_diag living in the namespace `ns` (a /proc/.../ns/net)."""
        return cls(in_netns(ns, _new_socket), ns=ns, ender=ender)

    def destroy_if_quiet(self, sock: DiagSocket, quiet_ns: int) -> int | None:
        """End `sock` if it is quiet (no request or stream open for `quiet_ns`, no bytes
        unread) under its socket's lock, in the kernel: 0, or EBUSY (not quiet), ENOENT
        (gone), another errno. None where that is not available (no ender, or it
        failed): the caller then looks (`query`) and ends (`destroy`) in two steps."""
        ender, ns = self._ender, self._ns
        if ender is None or ns is None:
            return None
        return ender.end(sock.cookie, quiet_ns, lambda run: in_netns(ns, run))

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SockDiag:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        return self._seq

    def established(self) -> list[DiagSocket]:
        """Every ESTABLISHED TCP socket of the namespace, IPv4 and IPv6."""
        out: list[DiagSocket] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            seq = self._next_seq()
            self._sock.send(sockdiag.encode_dump(seq, family))
            done = False
            while not done:
                for msg in sockdiag.split_messages(self._sock.recv(_RECV_BYTES)):
                    if msg.seq != seq:
                        continue
                    if msg.type == sockdiag.NLMSG_DONE:
                        done = True
                    elif msg.type == sockdiag.NLMSG_ERROR:
                        err = sockdiag.decode_error(msg.payload)
                        raise OSError(err, f"sock_diag dump: {os.strerror(err)}")
                    elif msg.type == sockdiag.SOCK_DIAG_BY_FAMILY:
                        out.append(sockdiag.decode_socket(msg.payload))
        return out

    def query(self, sock: DiagSocket) -> DiagSocket | None:
        """The current state of `sock` (its queues); None once it is gone."""
        seq = self._next_seq()
        self._sock.send(sockdiag.encode_query(seq, sock))
        while True:
            for msg in sockdiag.split_messages(self._sock.recv(_RECV_BYTES)):
                if msg.seq != seq:
                    continue
                if msg.type == sockdiag.SOCK_DIAG_BY_FAMILY:
                    return sockdiag.decode_socket(msg.payload)
                if msg.type == sockdiag.NLMSG_ERROR:
                    return None

    def destroy(self, sock: DiagSocket) -> int:
        """End `sock` (the kernel resets it: the peer gets an RST); returns 0 or the
        errno (ENOENT: already gone; ESTALE: the tuple is another socket now)."""
        seq = self._next_seq()
        self._sock.send(sockdiag.encode_destroy(seq, sock))
        while True:
            for msg in sockdiag.split_messages(self._sock.recv(_RECV_BYTES)):
                if msg.seq == seq and msg.type == sockdiag.NLMSG_ERROR:
                    return sockdiag.decode_error(msg.payload)


def own_netns() -> int:
    """The inode of this process's network namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def open_diag(inode: int, ender: KernelEnder | None = None) -> SockDiag | None:
    """sock_diag in the network namespace with this inode (and `ender` to end quiet
    connections in the kernel there); None when the namespace is gone."""
    path = netns_path(inode)
    return None if path is None else SockDiag.in_netns(path, ender)
