"""Listening TCP sockets of every network namespace, read from /proc.

Sockets opened before the agent started were never seen completing a handshake, so
their role is unknown. The BPF program classifies them on first sight: a socket whose
local address:port is a listening one is a server socket, anything else a client.
The listening set is seeded from here before the program starts adopting sockets;
listeners created later are tracked by the program itself.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from aviator.agent.bpf.model import ip_to_raw16

_TCP_LISTEN = "0A"

Listener = tuple[bytes, int]  # (16 address bytes, v4 as v4-mapped; port)


def parse_proc_net_tcp(text: str, *, v6: bool) -> Iterator[Listener]:
    """Listening (address, port) pairs from the text of /proc/<pid>/net/tcp or tcp6.

    Addresses there are hex dumps of the in-kernel (network order) bytes printed as
    host-order 32-bit words; on little-endian machines each word's bytes are reversed.
    """
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 4 or fields[3] != _TCP_LISTEN:
            continue
        addr_hex, _, port_hex = fields[1].partition(":")
        words = [bytes.fromhex(addr_hex[i : i + 8]) for i in range(0, len(addr_hex), 8)]
        if sys.byteorder == "little":
            words = [w[::-1] for w in words]
        raw = b"".join(words)
        if v6:
            if len(raw) != 16:
                continue
        else:
            if len(raw) != 4:
                continue
            raw = b"\0" * 10 + b"\xff\xff" + raw
        yield raw, int(port_hex, 16)


def _namespace_pids(proc: Path) -> Iterator[Path]:
    """One /proc/<pid> per distinct network namespace (by the ns/net inode)."""
    seen: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            inode = os.stat(entry / "ns" / "net").st_ino
        except OSError:
            continue  # exited, or a kernel thread without access
        if inode in seen:
            continue
        seen.add(inode)
        yield entry


def listening_sockets(proc: Path = Path("/proc")) -> set[Listener]:
    """Every listening TCP (address, port) in every network namespace on this host."""
    found: set[Listener] = set()
    for pid_dir in _namespace_pids(proc):
        for name, v6 in (("tcp", False), ("tcp6", True)):
            try:
                text = (pid_dir / "net" / name).read_text()
            except OSError:
                continue
            found.update(parse_proc_net_tcp(text, v6=v6))
    return found


def listeners_from(pairs: Iterable[tuple[str, int]]) -> set[Listener]:
    """(ip text, port) pairs as listeners, for tests and explicit configuration."""
    return {(ip_to_raw16(ip), port) for ip, port in pairs}
