"""IP addresses as Aviator compares them: one canonical text per address (pure).

Every IP that becomes a key (pod IPs, EndpointSlice addresses, the agent's report
endpoints, addresses read from BPF maps) goes through `normalize_ip`, so the same
address always has the same text: IPv6 compressed and lower case, and an IPv4-mapped
IPv6 address (how the kernel stores IPv4 peers of a dual-stack socket) as plain IPv4.
"""

from __future__ import annotations

import functools
import ipaddress
from typing import Literal

Family = Literal["IPv4", "IPv6"]


# Cached: the same pod IPs come back on every evaluation and every report interval,
# and parsing would otherwise dominate planning for thousands of pods.
@functools.lru_cache(maxsize=1 << 16)
def normalize_ip(text: str) -> str | None:
    """The canonical text of an IP address, None when `text` is not one."""
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def family_of(ip: str) -> Family | None:
    """The address family of an IP (as its canonical form has it), None when invalid."""
    canonical = normalize_ip(ip)
    if canonical is None:
        return None
    return "IPv6" if ":" in canonical else "IPv4"
