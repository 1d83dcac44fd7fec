"""Each running box claims its own pod network (netns.claim_pod_network)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aviator.box.netns import POD_NETWORKS, NetworkUnavailable, PodNetwork, claim_pod_network


def test_first_box_gets_10_244_and_a_second_the_next_network(tmp_path: Path) -> None:
    first, fd1 = claim_pod_network(tmp_path)
    second, fd2 = claim_pod_network(tmp_path)
    try:
        assert str(first.cidr) == "10.244.0.0/16"
        assert str(second.cidr) == "10.245.0.0/16"
    finally:
        os.close(fd1)
        os.close(fd2)


def test_a_network_is_free_again_once_its_box_is_gone(tmp_path: Path) -> None:
    first, fd = claim_pod_network(tmp_path)
    os.close(fd)  # what the kernel does when the box process exits
    again, fd = claim_pod_network(tmp_path)
    os.close(fd)
    assert again == first


def test_all_taken_is_a_clear_error(tmp_path: Path) -> None:
    fds = [claim_pod_network(tmp_path)[1] for _ in POD_NETWORKS]
    try:
        with pytest.raises(NetworkUnavailable, match="taken by another running box"):
            claim_pod_network(tmp_path)
    finally:
        for fd in fds:
            os.close(fd)


def test_addresses_of_a_pod_network() -> None:
    net = PodNetwork(POD_NETWORKS[1])
    assert net.gateway == "10.245.0.1/16"
    assert net.node_address == "10.245.0.2"  # apart from the gateway the proxy sends from
    assert net.pod_range == ("10.245.1.1", "10.245.254.254")
