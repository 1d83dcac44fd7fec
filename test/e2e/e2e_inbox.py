"""Clients inside a box's network namespace, where the Services' ClusterIPs exist (the
real kube-proxy's rules live there): what a pod's connection to a Service does."""

from __future__ import annotations

import asyncio
import ctypes
import os
import socket

from aviator.box.traffic import Address, request_once
from aviator.kube.client import KubeClient
from aviator.kube.resources import SERVICES

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


class InBox:
    """Opens client sockets in the box's network namespace (where ClusterIPs exist)."""

    def __init__(self, box_pid: int) -> None:
        self._box = os.open(f"/proc/{box_pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self._box)
        os.close(self._own)

    def new_socket(self) -> socket.socket:
        # Only this thread switches, and only while it creates the socket: a socket
        # belongs to the namespace it was made in.
        if _libc.setns(self._box, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns(box)")
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        finally:
            if _libc.setns(self._own, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns(back)")

    async def connect(self, address: Address) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = self.new_socket()
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)


async def served(address: Address, n: int = 40, in_box: InBox | None = None) -> set[str]:
    """Which pods answered n new connections (a failed request counts as 'failed')."""
    connect = in_box.connect if in_box is not None else None
    samples = await asyncio.gather(
        *(
            request_once(address, timeout_s=3.0, **({"connect": connect} if connect else {}))
            for _ in range(n)
        )
    )
    return {(s.served_by or "failed") if s.ok else "failed" for s in samples}


async def cluster_ip(kube: KubeClient, ns: str, service: str) -> Address:
    svc = await kube.get(SERVICES, service, ns)
    return str(svc["spec"]["clusterIP"]), int(svc["spec"]["ports"][0]["port"])
