"""The test app: settings, latency modes, the HTTP server, and run-time control."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aviator.box.files import TESTAPP as APP
from aviator.box.traffic import request_once


def _load() -> ModuleType:
    # As `python testapp.py` does: its directory is on the path, for its sibling modules.
    if str(APP.parent) not in sys.path:
        sys.path.insert(0, str(APP.parent))
    spec = importlib.util.spec_from_file_location("testapp", APP)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["testapp"] = module
    spec.loader.exec_module(module)
    return module


testapp = _load()


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10ms", 0.01), ("0.5s", 0.5), ("2s", 2.0), ("250", 0.25), ("1m", 60.0), ("500us", 0.0005)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert testapp.parse_duration(text) == pytest.approx(seconds)


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        testapp.parse_duration("fast")
    with pytest.raises(ValueError):
        testapp.settings_from_env({"MODE": "chaotic"})
    with pytest.raises(ValueError):
        testapp.settings_from_env({"ERROR_RATE": "1.5"})


def test_control_query_changes_only_what_it_names() -> None:
    base = testapp.settings_from_env({"LATENCY": "10ms", "MODE": "lognormal", "SIGMA": "0.3"})
    slow = testapp.settings_from_query(base, "latency=2s")
    assert slow.latency_s == 2.0 and slow.mode == "lognormal" and slow.sigma == 0.3
    assert testapp.settings_from_query(base, "") == base


@settings(max_examples=200)
@given(st.floats(0.001, 5), st.integers(0, 2**32))
def test_fixed_mode_is_exact(latency: float, seed: int) -> None:
    s = testapp.Settings(latency_s=latency)
    assert s.draw_latency_s(random.Random(seed)) == latency


def test_lognormal_median_and_erratic_spikes() -> None:
    rng = random.Random(7)
    lognormal = testapp.Settings(latency_s=0.01, mode="lognormal", sigma=0.5)
    draws = sorted(lognormal.draw_latency_s(rng) for _ in range(4001))
    assert draws[2000] == pytest.approx(0.01, rel=0.1)
    erratic = testapp.Settings(latency_s=0.01, mode="erratic", spike_rate=0.1, spike_factor=20)
    spikes = sum(erratic.draw_latency_s(rng) > 0.1 for _ in range(4000))
    assert 300 < spikes < 500


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


Server = tuple[tuple[str, int], Path, subprocess.Popen[bytes]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    port = _free_port()
    control = tmp_path / "control"
    env = {
        "PATH": os.environ["PATH"],
        "PORT": str(port),
        "LISTEN_ADDR": "127.0.0.1",
        "LATENCY": "50ms",
        "POD_NAME": "pod-a",
        "CONTROL_FILE": str(control),
        "DRAIN": "0.3s",
    }
    proc = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert b"listening" in proc.stdout.readline()  # the app says so once it listens
    try:
        yield ("127.0.0.1", port), control, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def _get(address: tuple[str, int], path: str, method: str = "GET") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_answers_after_its_latency_and_names_the_pod(server: Server) -> None:
    address, _, _ = server
    sample = await request_once(address)
    assert sample.ok and sample.served_by == "pod-a"
    assert 0.05 <= sample.latency_s < 0.5
    start = time.monotonic()
    status, _ = await _get(address, "/healthz")
    assert status == 200 and time.monotonic() - start < 0.05


async def test_keep_alive_serves_several_requests_on_one_connection(server: Server) -> None:
    address, _, _ = server
    reader, writer = await asyncio.open_connection(*address)
    for _ in range(3):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        while (await reader.readline()) != b"\r\n":
            pass
        await reader.readexactly(len(b'{"status": "ok"}'))
    writer.close()


async def test_control_endpoint_and_control_file_change_latency(server: Server) -> None:
    address, control, _ = server
    status, body = await _get(address, "/control?latency=300ms", method="POST")
    assert status == 200 and b"300ms" in body
    assert (await request_once(address)).latency_s >= 0.3
    status, _ = await _get(address, "/control?mode=bogus", method="POST")
    assert status == 400
    control.write_text("latency=1ms")
    deadline = time.monotonic() + 5
    while (await request_once(address)).latency_s > 0.04:
        assert time.monotonic() < deadline, "the control file was not applied"
    control.unlink()  # back to the env settings (50 ms)
    deadline = time.monotonic() + 5
    while (await request_once(address)).latency_s < 0.05:
        assert time.monotonic() < deadline, "removing the control file did not reset"


async def test_keeps_serving_while_draining_after_sigterm(server: Server) -> None:
    address, _, proc = server
    proc.send_signal(signal.SIGTERM)
    sample = await request_once(address)
    assert sample.ok, "still serving during the drain period"
    assert await asyncio.to_thread(proc.wait, 5) == 0
