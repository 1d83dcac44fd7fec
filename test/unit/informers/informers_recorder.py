"""A handler that records what an informer delivered, and lets tests await it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aviator.informers import DeletedFinalStateUnknown, object_key

JSON = dict[str, Any]


class Recorder:
    """Records ("add"|"update"|"delete"|"tombstone", key, detail) tuples in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self._changed = asyncio.Condition()

    async def _note(self, event: tuple[str, str, Any]) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def on_add(self, obj: JSON, is_initial_list: bool) -> None:
        await self._note(("add", object_key(obj), is_initial_list))

    async def on_update(self, old: JSON, new: JSON) -> None:
        await self._note(("update", object_key(new), (old, new)))

    async def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> None:
        kind = "tombstone" if isinstance(obj, DeletedFinalStateUnknown) else "delete"
        await self._note((kind, object_key(obj), obj))

    async def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)

    def kinds(self, key: str) -> list[str]:
        return [kind for kind, k, _ in self.events if k == key]


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Yield to the loop until predicate holds (for state with no event to await)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - nothing to await: poll
            await asyncio.sleep(0.001)
