"""Stream helpers: controller URLs from EndpointSlices, token files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from aviator.agent.stream import TokenFile, urls_from_slices


def test_urls_from_slices() -> None:
    slices: list[dict[str, Any]] = [
        {
            "ports": [
                {"name": "metrics", "port": 9090, "protocol": "UDP"},
                {"name": "http", "port": 8080},
            ],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                {"addresses": ["10.0.0.3"]},  # unknown readiness counts as ready
            ],
        },
        {"ports": [{"name": "http", "port": 8080}], "endpoints": [{"addresses": ["fd00::7"]}]},
        {"ports": [], "endpoints": [{"addresses": ["10.0.0.9"]}]},  # no port: unusable
    ]
    assert urls_from_slices(slices) == [
        "ws://10.0.0.1:8080/v1/stream",
        "ws://10.0.0.3:8080/v1/stream",
        "ws://[fd00::7]:8080/v1/stream",
    ]
    assert urls_from_slices(slices, port_name="metrics") == []
    assert urls_from_slices(slices[:1], scheme="wss", port_name="http") == [
        "wss://10.0.0.1:8080/v1/stream",
        "wss://10.0.0.3:8080/v1/stream",
    ]


def test_token_file_falls_back_and_rereads(tmp_path: Path) -> None:
    primary, fallback = tmp_path / "projected", tmp_path / "sa"
    fallback.write_text("sa-token\n")
    tokens = TokenFile(primary, fallback, reread_s=3600)
    assert tokens.token() == "sa-token"
    primary.write_text("projected-1")
    assert tokens.token() == "sa-token"  # not due yet
    assert tokens.reload() == "projected-1"
    primary.write_text("projected-2")
    tokens.reread_s = 0
    assert tokens.token() == "projected-2"
    os.remove(primary)
    os.remove(fallback)
    assert tokens.reload() == ""
    assert TokenFile().token() == ""
