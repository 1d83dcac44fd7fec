"""EventRecorder's deduplication: one Event per (object, reason, note) per window, and
what it remembers is only the window's."""

from __future__ import annotations

from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from aviator.runtime.events import EventRecorder
from aviator.runtime.writer import Write, Writer

DEDUPE_S = 300.0


class Recording:
    """The writer's one method the recorder uses; it keeps what it was given."""

    def __init__(self) -> None:
        self.writes: list[Write] = []

    async def apply(self, write: Write) -> None:
        self.writes.append(write)


def pod(uid: str) -> dict[str, object]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": uid, "namespace": "ns", "uid": uid},
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_the_same_event_is_recorded_once_per_window() -> None:
    writer, clock = Recording(), Clock()
    recorder = EventRecorder(cast(Writer, writer), "test", dedupe_s=DEDUPE_S, clock=clock)
    assert await recorder.record(pod("a"), "Ejected", "slow")
    assert not await recorder.record(pod("a"), "Ejected", "slow")
    assert await recorder.record(pod("a"), "Ejected", "slower")  # another note
    assert await recorder.record(pod("b"), "Ejected", "slow")  # another object
    clock.now += DEDUPE_S
    assert await recorder.record(pod("a"), "Ejected", "slow")  # the window passed
    assert len(writer.writes) == 4


# Steps: (seconds to wait, object, note); the recorder must write exactly when the same
# key was not written within the window, and forget, at each write, every older key.
steps = st.lists(
    st.tuples(
        st.sampled_from([0.0, 1.0, 100.0, 299.0, 300.0, 1000.0]),
        st.integers(0, 4),
        st.integers(0, 2),
    ),
    max_size=60,
)


@given(steps)
async def test_dedupe_matches_a_window_per_key(script: list[tuple[float, int, int]]) -> None:
    writer, clock = Recording(), Clock()
    recorder = EventRecorder(cast(Writer, writer), "test", dedupe_s=DEDUPE_S, clock=clock)
    last: dict[tuple[int, int], float] = {}
    for wait, obj, note in script:
        clock.now += wait
        key = (obj, note)
        want = key not in last or clock.now - last[key] >= DEDUPE_S
        assert await recorder.record(pod(f"u{obj}"), "Reason", f"n{note}") is want
        if want:
            last[key] = clock.now
            # Each write forgets what the window no longer covers.
            assert all(clock.now - t < DEDUPE_S for t in recorder._recent.values())
