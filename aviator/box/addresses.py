"""Loopback address pools: pod IPs (127.0.x.y) and Service proxy addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable


class PoolExhausted(RuntimeError):
    """Every address of the pool is in use."""


class AddressPool:
    """Hands out IPv4 addresses from an inclusive range, one per key.

    Allocation moves forward round-robin through the range, so a released address is
    reused only after the pool wraps around: a stale EndpointSlice entry or a client
    holding an old address is then unlikely to reach a new pod by accident. `usable`
    lets the caller skip addresses something else on the machine already listens on.
    """

    def __init__(self, first: str, last: str) -> None:
        self._first = int(ipaddress.IPv4Address(first))
        self._last = int(ipaddress.IPv4Address(last))
        if self._last < self._first:
            raise ValueError(f"empty address range {first}..{last}")
        self._next = self._first
        self._by_key: dict[str, int] = {}
        self._taken: set[int] = set()

    @property
    def size(self) -> int:
        return self._last - self._first + 1

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> str | None:
        value = self._by_key.get(key)
        return None if value is None else str(ipaddress.IPv4Address(value))

    def allocate(self, key: str, usable: Callable[[str], bool] = lambda _: True) -> str:
        """The key's address; a new one if it has none. Idempotent per key."""
        existing = self.get(key)
        if existing is not None:
            return existing
        for _ in range(self.size):
            candidate = self._next
            self._next = self._first if candidate >= self._last else candidate + 1
            if candidate in self._taken or _is_reserved(candidate):
                continue
            text = str(ipaddress.IPv4Address(candidate))
            if not usable(text):
                continue
            self._taken.add(candidate)
            self._by_key[key] = candidate
            return text
        raise PoolExhausted(f"no free address left in a pool of {self.size}")

    def reserve(self, key: str, address: str) -> bool:
        """Record an address already in use (e.g. a pod IP found on restart)."""
        value = int(ipaddress.IPv4Address(address))
        if not self._first <= value <= self._last or value in self._taken:
            return False
        self._taken.add(value)
        self._by_key[key] = value
        return True

    def release(self, key: str) -> str | None:
        value = self._by_key.pop(key, None)
        if value is None:
            return None
        self._taken.discard(value)
        return str(ipaddress.IPv4Address(value))


def _is_reserved(value: int) -> bool:
    # Network (x.y.z.0) and broadcast-looking (x.y.z.255) addresses confuse people
    # reading `kubectl get pods -o wide`; skip them.
    return value & 0xFF in (0, 255)
