"""Stand-ins for the hand-off executor's I/O in unit tests: the program's socket table
and a sock_diag handle that ends what it is told to (recording it)."""

from __future__ import annotations

from aviator.agent.bpf.model import SocketState
from aviator.agent.handoff.sockdiag import DiagSocket


class FakeTable:
    def __init__(self, socks: list[SocketState]) -> None:
        self.socks = {s.sk: s for s in socks}

    def sockets(self) -> list[SocketState]:
        return list(self.socks.values())

    def socket(self, sk: int) -> SocketState | None:
        return self.socks.get(sk)


class FakeDiag:
    def __init__(self, table: FakeTable) -> None:
        self.table = table
        self.destroyed: list[DiagSocket] = []

    def established(self) -> list[DiagSocket]:
        return [DiagSocket(2, 1, s.local, s.remote, 0, s.sk) for s in self.table.socks.values()]

    def query(self, sock: DiagSocket) -> DiagSocket | None:
        return sock if sock.cookie in self.table.socks else None

    def destroy(self, sock: DiagSocket) -> int:
        self.destroyed.append(sock)
        del self.table.socks[sock.cookie]
        return 0

    def destroy_if_quiet(self, sock: DiagSocket, quiet_ns: int) -> int | None:
        return None  # no in-kernel end: a look, then a destroy

    def close(self) -> None:
        pass

    @property
    def destroyed_cookies(self) -> list[int]:
        return [d.cookie for d in self.destroyed]
