"""Property: whatever the server and the network do, handlers end up seeing the truth.

Random writes interleaved with cut connections, clean closes, expired watches,
compactions and failing lists; afterwards the state rebuilt from notifications alone
equals the server's, and every key's notifications were well-formed and in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st
from informers_fake_api import FakeApi, gone

from aviator.informers import (
    Backoff,
    DeletedFinalStateUnknown,
    SharedIndexInformer,
    object_key,
    resource_version,
)
from aviator.kube.resources import CONFIGMAPS

JSON = dict[str, Any]
NAMES = ["a", "b", "c", "d"]


class StrictMirror:
    """Rebuilds state from notifications; records anything ill-formed."""

    def __init__(self) -> None:
        self.state: dict[str, JSON] = {}
        self.problems: list[str] = []

    def on_add(self, obj: JSON, is_initial_list: bool) -> None:
        key = object_key(obj)
        if key in self.state:
            self.problems.append(f"add of cached {key}")
        self.state[key] = obj

    def on_update(self, old: JSON, new: JSON) -> None:
        key = object_key(new)
        seen = self.state.get(key)
        if seen is None:
            self.problems.append(f"update of unknown {key}")
        elif int(resource_version(new)) <= int(resource_version(seen)):
            self.problems.append(f"update of {key} not newer")
        elif seen is not old:
            self.problems.append(f"update of {key} with a stale old object")
        self.state[key] = new

    def on_delete(self, obj: JSON | DeletedFinalStateUnknown) -> None:
        key = object_key(obj)
        if key not in self.state:
            self.problems.append(f"delete of unknown {key}")
        self.state.pop(key, None)


actions = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(NAMES)),
        st.tuples(st.just("write"), st.sampled_from(NAMES)),
        st.tuples(st.just("write"), st.sampled_from(NAMES)),
        st.tuples(
            st.sampled_from(["break", "close", "expire", "compact", "fail-list", "settle"]),
            st.none(),
        ),
    ),
    max_size=40,
)


async def scenario(steps: list[tuple[str, str | None]]) -> tuple[FakeApi, StrictMirror]:
    api = FakeApi()
    informer = SharedIndexInformer(api, CONFIGMAPS)
    informer.reflector.backoff = Backoff(initial_s=0.0005, max_s=0.002)
    mirror = StrictMirror()
    informer.add_event_handler(mirror)
    await informer.start()
    counter = 0
    try:
        for action, name in steps:
            if action == "write":
                assert name is not None
                counter += 1
                key = f"default/{name}"
                if key not in api.objects:
                    api.create(name, v=str(counter))
                elif counter % 3:
                    api.update(name, v=str(counter))
                else:
                    api.delete(name)
            elif action == "break":
                api.break_watches()
            elif action == "close":
                api.close_watches()
            elif action == "expire":
                api.expire_watches()
            elif action == "compact":
                api.compact()
                api.break_watches()  # reconnecting from before the compaction: 410
            elif action == "fail-list":
                api.list_faults.append(gone())
            for _ in range(3):
                await asyncio.sleep(0)
            if action == "settle":
                await asyncio.sleep(0.002)
        truth = {k: resource_version(o) for k, o in api.objects.items()}
        async with asyncio.timeout(5):
            while {k: resource_version(o) for k, o in mirror.state.items()} != truth:  # noqa: ASYNC110
                await asyncio.sleep(0.001)
        cache = {object_key(o): resource_version(o) for o in informer.indexer.list()}
        assert cache == truth
    finally:
        await informer.stop()
    return api, mirror


@settings(max_examples=150, deadline=None)
@given(actions)
def test_notifications_rebuild_the_server_state(steps: list[tuple[str, str | None]]) -> None:
    _, mirror = uvloop.run(scenario(steps))
    assert mirror.problems == []
