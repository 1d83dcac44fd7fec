"""The garbage collector's settings for long-running components that hold caches.

An informer cache holds many small dicts (decoded API objects) for the life of the
process, and they never form reference cycles. With CPython's default first threshold
(700 allocations) the cyclic collector scans the young generation every few hundred
allocations, and one decoded watch event allocates dozens of containers: in the
informer ingest benchmark that was about half of the time per event, and the survivors
it promotes make the older generations' scans grow with the cache. A first threshold of
50,000 makes young collections rare; garbage that does form cycles (asyncio's futures
and exceptions with tracebacks) is still collected, a little later. The older
generations keep CPython's defaults.
"""

from __future__ import annotations

import gc

FIRST_THRESHOLD = 50_000


def tune_for_caches() -> None:
    """Raise the collector's first threshold (idempotent; the other two stay)."""
    _, second, third = gc.get_threshold()
    gc.set_threshold(FIRST_THRESHOLD, second, third)
