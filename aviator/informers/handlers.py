"""What an informer calls: the ResourceEventHandler protocol and a function-based adapter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from aviator.informers.keys import JSON, DeletedFinalStateUnknown

MaybeAwaitable = Awaitable[None] | None

AddFunc = Callable[[JSON, bool], MaybeAwaitable]
UpdateFunc = Callable[[JSON, JSON], MaybeAwaitable]
DeleteFunc = Callable[[JSON | DeletedFinalStateUnknown], MaybeAwaitable]


@runtime_checkable
class ResourceEventHandler(Protocol):
    """Receives one informer's notifications, in order. Each method may be sync or async.

    - on_add(obj, is_initial_list): a new object; is_initial_list is True for objects in
      the first list and for the synthetic adds a handler registered late receives.
    - on_update(old, new): a changed object; old is new on a periodic resync.
    - on_delete(obj): the last state of a deleted object, or a DeletedFinalStateUnknown
      when the delete happened while the watch was down.
    """

    def on_add(self, obj: JSON, is_initial_list: bool) -> MaybeAwaitable: ...

    def on_update(self, old: JSON, new: JSON) -> MaybeAwaitable: ...

    def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> MaybeAwaitable: ...


class FuncHandler:
    """A ResourceEventHandler from optional callables; missing ones ignore the event.

    `add` takes (obj, is_initial_list); `update` (old, new); `delete` (obj or tombstone).
    """

    def __init__(
        self,
        add: AddFunc | None = None,
        update: UpdateFunc | None = None,
        delete: DeleteFunc | None = None,
    ) -> None:
        self._add = add
        self._update = update
        self._delete = delete

    def on_add(self, obj: JSON, is_initial_list: bool) -> MaybeAwaitable:
        return self._add(obj, is_initial_list) if self._add else None

    def on_update(self, old: JSON, new: JSON) -> MaybeAwaitable:
        return self._update(old, new) if self._update else None

    def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> MaybeAwaitable:
        return self._delete(obj) if self._delete else None
