"""bench.common.stop_shared: the benchmarks' shared box and control plane stop when
asked (test/bench/conftest.py asks at the end of each module), not only at exit."""

from __future__ import annotations

import atexit
from typing import Any

import pytest

from bench import common


class Running:
    def __init__(self) -> None:
        self.stopped = 0

    def stop(self) -> None:
        self.stopped += 1


def test_the_shared_box_and_control_plane_stop_once_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    box, cp = Running(), Running()
    unregistered: list[Any] = []
    monkeypatch.setattr(atexit, "unregister", unregistered.append)
    monkeypatch.setattr(common, "_shared_box", box)
    monkeypatch.setattr(common, "_shared", cp)
    common.stop_shared()
    assert (box.stopped, cp.stopped) == (1, 1)
    assert common._shared_box is None and common._shared is None
    assert unregistered == [box.stop, cp.stop]  # not stopped a second time at exit
    common.stop_shared()  # nothing left to stop
    assert (box.stopped, cp.stopped) == (1, 1)
