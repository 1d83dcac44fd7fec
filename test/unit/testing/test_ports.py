"""free_port: servers' ports come from outside the kernel's ephemeral range, where an
outgoing connection cannot take them between the choice and the server's bind."""

from __future__ import annotations

import socket

from aviator.testing.ports import LOWEST, ephemeral_start, free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    top = ephemeral_start()
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    if top > LOWEST:
        assert all(LOWEST <= p < top for p in ports), (top, ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
