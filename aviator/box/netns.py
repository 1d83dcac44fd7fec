"""The box's own network namespace.

The API server refuses loopback addresses (127.0.0.0/8) in EndpointSlices, so box
pods cannot live on 127.0.x.y. Instead the box process moves itself into a new
network namespace at start-up, where the whole pod network (POD_CIDR) is assigned to
the namespace's loopback device: every address in it is local, bindable and
reachable, like 127/8 is, and nothing outside the namespace can see it. Everything
the box starts (control plane, pods, controller, agents) inherits the namespace.

The user's side stays in the host namespace: sockets the user must reach (the API
server bridge, the Service proxy listeners on 127.0.0.x) are created there by
switching the calling thread into the host namespace for the duration of a
`socket()` call; a socket stays in the namespace it was created in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import socket
import subprocess
from collections.abc import Iterator

POD_CIDR = "10.244.0.0/16"
POD_GATEWAY = "10.244.0.1/16"
POD_RANGE = ("10.244.1.1", "10.244.254.254")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class NetworkUnavailable(RuntimeError):
    """The box cannot create its network namespace (usually: not root)."""


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _listen(sock: socket.socket, ip: str, port: int, backlog: int) -> socket.socket:
    """`sock` bound to (ip, port), listening and non-blocking; closed if that fails."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class BoxNetwork:
    """Enter with `BoxNetwork.enter()` from the main thread, before any other thread or
    event loop exists: threads started later inherit the namespace."""

    def __init__(self, host_fd: int, box_fd: int) -> None:
        self._host_fd = host_fd
        self._box_fd = box_fd

    @classmethod
    def enter(cls) -> BoxNetwork:
        host_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        except OSError as err:
            os.close(host_fd)
            raise NetworkUnavailable(
                f"the box needs its own network namespace and could not create one ({err}); "
                "run it as root (pods get addresses in "
                f"{POD_CIDR}, which only exist inside that namespace)"
            ) from err
        box_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for argv in (
                ["ip", "link", "set", "lo", "up"],
                ["ip", "addr", "add", POD_GATEWAY, "dev", "lo"],
            ):
                subprocess.run(argv, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            raise NetworkUnavailable(f"cannot set up the box network: {detail}") from err
        return cls(host_fd, box_fd)

    @contextlib.contextmanager
    def host(self) -> Iterator[None]:
        """Run the block in the host namespace (only the calling thread switches)."""
        _check(_libc.setns(self._host_fd, _CLONE_NEWNET), "setns(host)")
        try:
            yield
        finally:
            _check(_libc.setns(self._box_fd, _CLONE_NEWNET), "setns(box)")

    async def open_host_connection(
        self, address: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Connect from the host namespace, as a user's client would (the demo's traffic)."""
        with self.host():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    def host_listener(self, ip: str, port: int, backlog: int = 1024) -> socket.socket:
        """A listening TCP socket in the host namespace (raises OSError if taken)."""
        with self.host():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        return _listen(sock, ip, port, backlog)


class HostNetwork:
    """No namespace: everything in the host's (tests of the proxy on 127/8 use this)."""

    def host_listener(self, ip: str, port: int, backlog: int = 1024) -> socket.socket:
        return _listen(socket.socket(socket.AF_INET, socket.SOCK_STREAM), ip, port, backlog)
