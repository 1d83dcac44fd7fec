"""Reading the endpoints map by change and pruning it (aviator.agent.bpf.tracked),
against maps that behave as BCC's tables over the header's own types: what the
program marked is read, nothing else; a change landing after its mark was drained is
read at the next read; what is pruned leaves the kernel's maps."""

from __future__ import annotations

import ctypes
from typing import Any

from aviator.agent.bpf import abi
from aviator.agent.bpf.model import EndpointKey, ip_to_raw16
from aviator.agent.bpf.tracked import TrackedEndpoints, open_starts

A = abi.default()
SERVER = next(v for v, r in A.roles.items() if r == "server")


class Table(dict[bytes, Any]):
    """A BCC table: ctypes keys in, ctypes values out, keyed by the key's bytes."""

    def __init__(self, key: Any, leaf: Any) -> None:
        super().__init__()
        self.Key, self.Leaf = key, leaf

    def _k(self, key: Any) -> Any:
        if isinstance(key, ctypes.c_uint64):
            return key.value
        return key if isinstance(key, bytes | int) else bytes(key)

    def __getitem__(self, key: Any) -> Any:
        return super().__getitem__(self._k(key))

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(self._k(key))

    def put(self, key: Any, value: Any) -> None:
        super().__setitem__(self._k(key), value)

    def _key(self, raw: Any) -> Any:
        return raw if isinstance(raw, int) else self.Key.from_buffer_copy(raw)

    def items(self) -> Any:  # type: ignore[override]
        return [(self._key(k), v) for k, v in list(super().items())]

    def items_lookup_batch(self) -> Any:
        return self.items()

    def items_lookup_and_delete_batch(self) -> Any:
        out = self.items()
        self.clear()
        return out

    def __iter__(self) -> Any:
        return iter([self._key(k) for k in list(super().keys())])


def maps() -> dict[bytes, Table]:
    h = A.header
    sockets = Table(ctypes.c_uint64, h.ctype("sock_state"))
    h2 = Table(ctypes.c_uint64, h.ctype("h2_conn"))
    return {
        b"listeners": Table(h.ctype("listen_key"), ctypes.c_uint8),
        b"endpoints": Table(h.ctype("ep_key"), h.ctype("ep_val")),
        b"ep_dirty": Table(h.ctype("ep_key"), ctypes.c_uint8),
        b"sockets": sockets,
        b"h2conns": h2,
    }


def key(ip: str, port: int = 8080) -> Any:
    k = A.header.ctype("ep_key")()
    k.addr[:] = list(ip_to_raw16(ip))
    k.port, k.role = port, SERVER
    return k


def sample(bpf: dict[bytes, Table], ip: str, n: int = 1, *, mark: bool = True) -> None:
    """What the program does: count into the endpoint (created when missing), mark it."""
    k = key(ip)
    table = bpf[b"endpoints"]
    try:
        v = table[k]
    except KeyError:
        v = table.Leaf()
        table.put(k, v)
    v.count += n
    v.buckets[5] += n
    if mark:
        bpf[b"ep_dirty"].put(k, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_read_decodes_what_was_marked_and_the_marks_of_the_read_before() -> None:
    bpf, clock = maps(), Clock()
    t = TrackedEndpoints(clock=clock)
    for i in range(50):
        sample(bpf, f"10.0.0.{i + 1}")
    assert len(t.refresh(bpf, A)) == 50 and t.last.full  # the first read: the whole map
    sample(bpf, "10.0.0.1")
    got = t.refresh(bpf, A)
    assert t.last.decoded == 1 and got[EndpointKey("10.0.0.1", 8080, "server")].count == 2
    # A change that lands just after its mark was drained (no new mark) is still read:
    # the endpoints marked the read before are read again.
    sample(bpf, "10.0.0.1", mark=False)
    got = t.refresh(bpf, A)
    assert got[EndpointKey("10.0.0.1", 8080, "server")].count == 3
    assert t.last.decoded == 1
    assert t.refresh(bpf, A) and t.last.decoded == 0  # nothing changed: nothing decoded
    # Once a minute, the whole map again (a lost mark costs at most that).
    sample(bpf, "10.0.0.2", mark=False)
    clock.now += 61
    got = t.refresh(bpf, A)
    assert t.last.full and got[EndpointKey("10.0.0.2", 8080, "server")].count == 2


def test_prune_removes_idle_endpoints_of_non_local_ips_from_the_kernel_map() -> None:
    bpf, clock = maps(), Clock()
    t = TrackedEndpoints(clock=clock)
    for ip in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        sample(bpf, ip)
    t.refresh(bpf, A)
    clock.now += 10
    sample(bpf, "10.0.0.3")  # busy: not pruned even though not local
    t.refresh(bpf, A)
    local = {"10.0.0.1"}
    done = t.prune(bpf, A, is_local_pod=local.__contains__, idle_s=5.0)
    assert done.endpoints == 1  # 10.0.0.2: not local, idle 10 s
    assert {k.ip for k in t.refresh(bpf, A)} == {"10.0.0.1", "10.0.0.3"}
    assert len(bpf[b"endpoints"]) == 2 and bytes(key("10.0.0.2")) not in bpf[b"endpoints"]
    # It comes back with its next sample, as a new endpoint.
    sample(bpf, "10.0.0.2")
    assert EndpointKey("10.0.0.2", 8080, "server") in t.refresh(bpf, A)


def _socket(bpf: dict[bytes, Table], sk: int, ip: str, *, start: int = 0, streams: int = 0) -> None:
    s = A.header.ctype("sock_state")()
    s.ep.addr[:] = list(ip_to_raw16(ip))
    s.ep.port, s.ep.role, s.start_ns, s.streams = 8080, SERVER, start, streams
    bpf[b"sockets"].put(sk, s)


def test_prune_removes_idle_connections_of_departed_pods_and_orphaned_h2_state() -> None:
    bpf, clock = maps(), Clock()
    t = TrackedEndpoints(clock=clock)
    _socket(bpf, 1, "10.0.0.9")  # idle, its pod left
    _socket(bpf, 2, "10.0.0.9", start=5)  # a request open: kept
    _socket(bpf, 3, "10.0.0.1")  # a local pod's
    h2 = bpf[b"h2conns"]
    h2.put(3, h2.Leaf())  # its connection is tracked
    h2.put(77, h2.Leaf())  # no such connection: its close was missed
    for ip in ("10.0.0.9", "10.0.0.1"):
        lk = A.header.ctype("listen_key")()
        lk.addr[:] = list(ip_to_raw16(ip))
        lk.port = 8080
        bpf[b"listeners"].put(lk, 1)
    t.refresh(bpf, A)
    done = t.prune(bpf, A, is_local_pod=lambda ip: True, idle_s=5.0, departed=["10.0.0.9"])
    assert done.sockets == 1 and sorted(bpf[b"sockets"]) == [2, 3]
    assert done.listeners == 1 and len(bpf[b"listeners"]) == 1
    assert done.h2conns == 0  # first seen orphaned: a socket may be on its way in
    done = t.prune(bpf, A, is_local_pod=lambda ip: True, idle_s=5.0)
    assert done.h2conns == 1 and sorted(h2) == [3]


def test_open_starts_reads_open_requests_and_streams_of_the_ips_asked_about() -> None:
    bpf = maps()
    _socket(bpf, 1, "10.0.0.1", start=500)
    _socket(bpf, 2, "10.0.0.1", start=300)
    _socket(bpf, 3, "10.0.0.2", streams=1)
    _socket(bpf, 4, "10.0.0.3", start=100)
    conn = bpf[b"h2conns"].Leaf()
    conn.slots[7].sid, conn.slots[7].start_ns = 15, 200
    bpf[b"h2conns"].put(3, conn)
    got = open_starts(bpf, A, {"10.0.0.1", "10.0.0.2"})
    assert got == {
        EndpointKey("10.0.0.1", 8080, "server"): 300,
        EndpointKey("10.0.0.2", 8080, "server"): 200,
    }
