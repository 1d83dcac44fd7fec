"""Ports for servers this process starts (etcd, the API server, test apps).

A port the kernel picks for `bind(("127.0.0.1", 0))` comes from its ephemeral range,
the range it also hands outgoing connections. Between choosing the port and the server
binding it, any process's new connection may take it, and the server exits with
"address already in use" (etcd did, in a fresh `make test` beside a busy real node).
`free_port` therefore chooses below the ephemeral range, where only another listener
can collide, and never hands the same port out twice in one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Ports below this are left alone: well-known ones, and 10000 + port, where the box
# proxy moves Service ports it may not bind (aviator/box/proxy.py).
LOWEST = 20000
_ATTEMPTS = 200

_handed: set[int] = set()
_lock = threading.Lock()
_rng = random.Random()


def ephemeral_start(path: Path = EPHEMERAL_RANGE) -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at `host`, outside the ephemeral range where there is
    room for one (else one the kernel picks)."""
    top = ephemeral_start()
    with _lock:
        for _ in range(_ATTEMPTS if top > LOWEST else 0):
            port = _rng.randrange(LOWEST, top)
            if port not in _handed and _bindable(host, port):
                _handed.add(port)
                return port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            chosen: int = s.getsockname()[1]
        _handed.add(chosen)
        return chosen


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
