"""Which member owns a key: rendezvous (highest-random-weight) hashing, pure.

Every member scores every key with a hash of (member, key); the highest score owns the
key (ties, which need a 64-bit collision, go to the smaller name). Properties, tested
with hypothesis in test/unit/sharding/test_ring.py:

- every key has exactly one owner while there is at least one member, none without;
- the answer depends only on the set of members and the key: replicas that see the same
  members agree, whatever order they learned them in;
- adding a member moves to it only the keys it now wins (about 1/N of them) and moves
  no key between the others; removing a member moves only its own keys.

The hash is BLAKE2b (stable across processes and Python versions, unlike `hash()`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def score(member: str, key: str) -> int:
    """The member's weight for the key: 64 bits of BLAKE2b over both, separated."""
    digest = hashlib.blake2b(
        member.encode() + b"\x00" + key.encode(), digest_size=8, person=b"aviator-ring"
    ).digest()
    return int.from_bytes(digest, "big")


def owner(members: Iterable[str], key: str) -> str | None:
    """The member that owns `key`, None when there are no members."""
    best: tuple[int, str] | None = None
    for member in members:
        # Highest score wins; on a tie the smaller name (so order never matters).
        candidate = (score(member, key), member)
        if best is None or candidate[0] > best[0] or (candidate[0] == best[0] and member < best[1]):
            best = candidate
    return None if best is None else best[1]


def assign(members: Iterable[str], keys: Iterable[str]) -> dict[str, str]:
    """key → owner for every key (empty when there are no members)."""
    ring = sorted(set(members))
    if not ring:
        return {}
    return {key: owner(ring, key) or "" for key in keys}
