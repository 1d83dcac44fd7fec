"""A TCP connection on the event loop that knows when the kernel sent and received its
bytes: software timestamps (SO_TIMESTAMPING, Linux), so a client's truth does not
include its own delay in waking up on a busy machine.

- received: every read comes with the kernel's receive time of its data (for TCP, that
  of the last segment the read drained; a read that drains several segments is
  stamped with the latest, never later than the read);
- sent: `write` returns the stream offset just past the data; `sent_at(offset)` is
  when the kernel sent the byte before it (`SOF_TIMESTAMPING_OPT_ID`: the kernel
  reports each send with the offset of its last byte), None until the kernel said.

Where the kernel gives no timestamps the event loop's reading of CLOCK_REALTIME at
the syscall stands in; all times are CLOCK_REALTIME nanoseconds. `scm_timestamp` reads
a stamp from ancillary data (also for blocking sockets).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import socket
import struct
import time
from collections.abc import Callable

SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
# tx software, rx software, report software, stamp ids (byte offsets), no payload echo
TIMESTAMPING_FLAGS = (1 << 1) | (1 << 3) | (1 << 4) | (1 << 7) | (1 << 11)
CMSG_SPACE = socket.CMSG_SPACE(48) + socket.CMSG_SPACE(64)
_RECVERR = {(socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25)}  # IP(V6)_RECVERR
_READ_SIZE = 262144


def scm_timestamp(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The software timestamp (ns, CLOCK_REALTIME) in a recvmsg's ancillary data."""
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING and len(payload) >= 16:
            sec, nsec = struct.unpack_from("qq", payload)
            if sec or nsec:
                return int(sec * 1_000_000_000 + nsec)
    return None


def _stamp_id(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """ee_data of a sock_extended_err: the offset of the last byte a send carried."""
    for level, kind, payload in ancdata:
        if (level, kind) in _RECVERR and len(payload) >= 16:
            data: int = struct.unpack_from("I", payload, 12)[0]
            return data
    return None


class StampedConnection:
    """A connected, non-blocking TCP socket read and written on the running loop."""

    def __init__(
        self,
        sock: socket.socket,
        on_data: Callable[[bytes, int], None],
        on_lost: Callable[[str], None],
        stamped: bool,
    ) -> None:
        self.sock = sock
        self.stamped = stamped
        self._on_data = on_data
        self._on_lost = on_lost
        self._loop = asyncio.get_running_loop()
        self._out = bytearray()
        self._written = 0  # stream offset just past the last byte handed to write()
        self._sent_ids: list[int] = []  # kernel send reports: offset of the last byte
        self._sent_ns: list[int] = []
        self._app_sent: list[tuple[int, int]] = []  # (end offset, ns) without stamps
        self.closed = False
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        on_data: Callable[[bytes, int], None],
        on_lost: Callable[[str], None],
    ) -> StampedConnection:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            try:
                # Connected (TCP refuses stamp ids before) and before the first byte, so
                # that stamp ids count from the stream's start.
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TIMESTAMPING_FLAGS)
                stamped = True
            except OSError:
                stamped = False
        except BaseException:
            sock.close()
            raise
        return cls(sock, on_data, on_lost, stamped)

    @property
    def written(self) -> int:
        """The stream offset just past the last byte written."""
        return self._written

    @property
    def local_address(self) -> tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def write(self, data: bytes) -> int:
        """Queue `data`; the stream offset just past it (for `sent_at`)."""
        if self.closed or not data:
            return self._written
        self._written += len(data)
        if not self.stamped:
            self._app_sent.append((self._written, time.time_ns()))
        if self._out:
            self._out += data
            return self._written
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError as err:
            self._lose(f"send failed: {err}")
            return self._written
        if n < len(data):
            self._out += data[n:]
            self._loop.add_writer(self.sock.fileno(), self._writable)
        return self._written

    def sent_at(self, end: int) -> int | None:
        """When the kernel sent the byte at offset `end - 1` (ns), if it said yet."""
        if not self.stamped:
            for offset, ns in self._app_sent:
                if offset >= end:
                    return ns
            return None
        self._drain_errqueue()
        i = bisect.bisect_left(self._sent_ids, end - 1)
        return self._sent_ns[i] if i < len(self._sent_ns) else None

    def forget_before(self, end: int) -> None:
        """Drop send reports for bytes before `end`: no open request needs them."""
        i = bisect.bisect_left(self._sent_ids, end - 1)
        del self._sent_ids[:i], self._sent_ns[:i]
        self._app_sent = [(o, ns) for o, ns in self._app_sent if o >= end]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ValueError, OSError):
            self._loop.remove_reader(self.sock.fileno())
            self._loop.remove_writer(self.sock.fileno())
        self.sock.close()

    def _lose(self, why: str) -> None:
        if not self.closed:
            self.close()
            self._on_lost(why)

    def _writable(self) -> None:
        try:
            n = self.sock.send(self._out)
        except BlockingIOError:
            return
        except OSError as err:
            self._lose(f"send failed: {err}")
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self.sock.fileno())

    def _readable(self) -> None:
        if self.stamped:
            # Pending send reports make the socket poll with POLLERR: drain them here, or
            # asyncio's selector loop would call us again at once; libuv (uvloop) stops
            # watching a socket after POLLERR, so watch it anew.
            self._drain_errqueue()
            if not self.closed:
                self._loop.remove_reader(self.sock.fileno())
                self._loop.add_reader(self.sock.fileno(), self._readable)
        try:
            data, ancdata, _, _ = self.sock.recvmsg(_READ_SIZE, CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._lose(f"receive failed: {err}")
            return
        if not data:
            self._lose("connection closed")
            return
        stamp = scm_timestamp(ancdata) if self.stamped else None
        self._on_data(data, stamp if stamp is not None else time.time_ns())

    def _drain_errqueue(self) -> None:
        while not self.closed:
            try:
                _, ancdata, _, _ = self.sock.recvmsg(
                    64, CMSG_SPACE, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            stamp, last = scm_timestamp(ancdata), _stamp_id(ancdata)
            if stamp is not None and last is not None:
                self._sent_ids.append(last)
                self._sent_ns.append(stamp)
