"""The box's own network namespace.

The API server refuses loopback addresses (127.0.0.0/8) in EndpointSlices, so box
pods cannot live on 127.0.x.y. Instead the box process moves itself into a new
network namespace at start-up, where the whole pod network (POD_CIDR) is assigned to
the namespace's loopback device: every address in it is local, bindable and
reachable, like 127/8 is, and nothing outside the namespace can see it. Everything
the box starts (control plane, pods, controller, agents) inherits the namespace.

Several boxes may run on one machine (a developer's box next to a test suite's). Each
has its own namespace, but an agent's BPF program sees the whole kernel's traffic and
attributes it by pod IP, so two boxes with the same pod network would each count the
other's traffic. Each box therefore claims its own /16 (10.244.0.0/16 first, then
10.245.0.0/16, ...) by holding an exclusive lock on a file named after it for its
lifetime; the kernel drops the lock when the box exits, however it exits.

The user's side stays in the host namespace: sockets the user must reach (the API
server bridge, the Service proxy listeners on 127.0.0.x) are created there by
switching the calling thread into the host namespace for the duration of a
`socket()` call; a socket stays in the namespace it was created in.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

POD_NETWORKS = tuple(ipaddress.IPv4Network(f"10.{b}.0.0/16") for b in range(244, 254))
LOCK_DIR = Path("/run/aviator-box")

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


@dataclass(frozen=True)
class PodNetwork:
    """The /16 one box's pods live in: gateway .0.1, pods from .1.1 to .254.254."""

    cidr: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        """The namespace's own address, with the prefix length (`ip addr add` form):
        every connection inside the box that binds no address comes from it (the box
        proxy's to the pods, as kube-proxy's would carry a client's address)."""
        return f"{self.cidr.network_address + 1}/{self.cidr.prefixlen}"

    @property
    def node_address(self) -> str:
        """The box nodes' own address: where the kubelet-like prober sends from, and
        what the agents are told is the node's (`--node-address`). Apart from the
        gateway, because agents leave the node's connections alone (the kubelet's
        probes are never handed off) and the proxy's must not look like them."""
        return str(self.cidr.network_address + 2)

    @property
    def pod_range(self) -> tuple[str, str]:
        """First and last pod address (the .0.x block stays the box's own)."""
        base = self.cidr.network_address
        return str(base + 256 + 1), str(base + 254 * 256 + 254)


def claim_pod_network(lock_dir: Path = LOCK_DIR) -> tuple[PodNetwork, int]:
    """The first of POD_NETWORKS no other box holds, and the open lock file that holds
    it (keep it open for the box's lifetime; close-on-exec, so pods do not inherit it)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for cidr in POD_NETWORKS:
        name = f"{cidr.network_address}-{cidr.prefixlen}.lock"
        fd = os.open(lock_dir / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return PodNetwork(cidr), fd
    raise NetworkUnavailable(
        f"every box pod network ({POD_NETWORKS[0]} to {POD_NETWORKS[-1]}) is taken by "
        f"another running box (locks in {lock_dir}): stop one with `aviator box down`"
    )


class BoxNetwork:
    """Enter with `BoxNetwork.enter()` from the main thread, before any other thread or
    event loop exists: threads started later inherit the namespace."""

    def __init__(self, host_fd: int, box_fd: int, pods: PodNetwork) -> None:
        self._host_fd = host_fd
        self._box_fd = box_fd
        self.pods = pods

    @classmethod
    def enter(cls) -> BoxNetwork:
        try:
            pods, _lock_fd = claim_pod_network()  # held until the process exits
        except PermissionError as err:
            raise NetworkUnavailable(
                f"cannot claim a pod network ({err}); run the box as root"
            ) from err
        host_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.unshare(_CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        except OSError as err:
            os.close(host_fd)
            raise NetworkUnavailable(
                f"the box needs its own network namespace and could not create one ({err}); "
                "run it as root (pods get addresses in "
                f"{pods.cidr}, which only exist inside that namespace)"
            ) from err
        box_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            for argv in (
                ["ip", "link", "set", "lo", "up"],
                ["ip", "addr", "add", pods.gateway, "dev", "lo"],
                ["ip", "addr", "add", f"{pods.node_address}/32", "dev", "lo"],
            ):
                subprocess.run(argv, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", "") or str(err)
            raise NetworkUnavailable(f"cannot set up the box network: {detail}") from err
        return cls(host_fd, box_fd, pods)

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
