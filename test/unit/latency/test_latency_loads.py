"""The controller's board of the loads pods report (aviator.latency.loads)."""

from __future__ import annotations

from aviator.latency.admission import PodPlace
from aviator.latency.loads import LoadBoard, admit_loads
from aviator.latency.schema import PodLoad

PLACES = {"10.0.0.1": [PodPlace("ns/a", "n1")], "10.0.0.2": [PodPlace("ns/b", "n2")]}


def locate(ip: str) -> list[PodPlace]:
    return PLACES.get(ip, [])


def test_an_agent_reports_loads_of_its_own_nodes_pods_only() -> None:
    loads = [
        PodLoad("10.0.0.1", "q", 1.0),
        PodLoad("10.0.0.2", "q", 2.0),
        PodLoad("10.9.9.9", "q", 3.0),
    ]
    assert admit_loads(loads, "n1", locate) == [PodLoad("10.0.0.1", "q", 1.0)]


def test_the_latest_snapshot_replaces_the_nodes_loads_while_fresh() -> None:
    board = LoadBoard(fresh_s=5.0)
    board.note("n1", [PodLoad("10.0.0.1", "q", 4.0), PodLoad("10.0.0.1", "kv", 0.5)], 0.0)
    board.note("n2", [PodLoad("10.0.0.2", "q", 2.0)], 0.0)
    assert board.load("10.0.0.1", "q", 1.0) == 4.0
    assert board.load("10.0.0.1", "other", 1.0) is None
    board.note("n1", [PodLoad("10.0.0.1", "q", 1.0)], 2.0)
    assert board.load("10.0.0.1", "q", 3.0) == 1.0
    assert board.load("10.0.0.1", "kv", 3.0) is None  # gone from the latest snapshot
    assert board.load("10.0.0.2", "q", 3.0) == 2.0
    assert board.load("10.0.0.2", "q", 5.5) is None  # n2's snapshot is stale
    board.note("n1", [], 4.0)
    assert board.load("10.0.0.1", "q", 4.0) is None and len(board) == 1


def test_a_pod_that_moved_nodes_is_spoken_for_by_its_new_node() -> None:
    board = LoadBoard(fresh_s=5.0)
    board.note("n1", [PodLoad("10.0.0.1", "q", 4.0)], 0.0)
    board.note("n2", [PodLoad("10.0.0.1", "q", 7.0)], 1.0)
    board.note("n1", [], 2.0)  # n1 no longer has it: n2's word stands
    assert board.load("10.0.0.1", "q", 2.0) == 7.0
