"""Stream helpers: controller URLs from EndpointSlices, token files; a connection
survives whatever the controller answers."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from aviator.agent.stream import (
    ControllerConnection,
    StreamTls,
    TokenFile,
    describe_reply,
    token_may_go,
    urls_from_slices,
)
from aviator.informers import Backoff


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


class StreamServer:
    """A websocket endpoint recording each connection's token and messages."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.messages: list[str] = []
        self.event = asyncio.Event()
        self.hang_up = False

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.tokens.append(request.headers.get("Authorization", ""))
        self.event.set()
        async for msg in ws:
            self.messages.append(msg.data)
            self.event.set()
            if self.hang_up:
                self.hang_up = False
                await ws.close()
        return ws

    async def until(self, pred: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not pred():
                self.event.clear()
                await self.event.wait()


async def test_connection_sends_while_connected_and_follows_token_changes(tmp_path: Path) -> None:
    server = StreamServer()
    app = web.Application()
    app.router.add_get("/v1/stream", server.handle)
    token = tmp_path / "token"
    token.write_text("one")
    async with TestServer(app) as ts, aiohttp.ClientSession() as session:
        conn = ControllerConnection(
            str(ts.make_url("/v1/stream")).replace("http", "ws", 1),
            TokenFile(token, reread_s=0),
            session,
            backoff=Backoff(initial_s=0.01, max_s=0.05),
        )
        conn.offer(["lost"])  # not connected yet: dropped, never replayed
        task = asyncio.get_running_loop().create_task(conn.run())
        try:
            await server.until(lambda: server.tokens == ["Bearer one"])
            async with asyncio.timeout(10):
                while not conn.connected:
                    conn.changed.clear()
                    await conn.changed.wait()
            conn.offer(["a"])
            await server.until(lambda: server.messages == ["a"])
            # The controller hangs up: the agent dials again with backoff.
            server.hang_up = True
            conn.offer(["b"])
            await server.until(lambda: len(server.tokens) == 2)
            # A rotated token makes the agent reconnect with the new one.
            token.write_text("two")
            await server.until(lambda: server.tokens[-1] == "Bearer two")
            assert server.tokens == ["Bearer one", "Bearer one", "Bearer two"]
            assert server.messages == ["a", "b"]  # "lost" was offered while disconnected
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_replies_are_described_whatever_their_shape() -> None:
    assert describe_reply('{"v": 1, "kind": "error", "error": "bad"}') == "bad"
    for odd in ("[1, 2]", "42", "null", '"text"', '{"error": [1]}', "not json", "{"):
        assert describe_reply(odd) == odd
    assert describe_reply("x" * 1000) == "x" * 300


async def test_a_reply_of_any_shape_never_ends_the_stream(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The known case: a controller answering with a JSON array made the stream task
    die for good. Now every reply is logged and the snapshots keep going."""
    received: list[str] = []
    got = asyncio.Event()

    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for reply in ("[1, 2, 3]", "7", "null", "\x00junk", '{"no": "error"}'):
            await ws.send_str(reply)
        await ws.send_bytes(b"\xff\xfe")
        async for msg in ws:
            received.append(msg.data)
            got.set()
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", handle)
    token = tmp_path / "token"
    token.write_text("t")
    async with TestServer(app) as ts, aiohttp.ClientSession() as session:
        conn = ControllerConnection(
            str(ts.make_url("/v1/stream")).replace("http", "ws", 1), TokenFile(token), session
        )
        task = asyncio.get_running_loop().create_task(conn.run())
        try:
            async with asyncio.timeout(10):
                while not conn.connected:
                    conn.changed.clear()
                    await conn.changed.wait()
                for i in range(3):
                    got.clear()
                    conn.offer([f"snapshot-{i}"])
                    await got.wait()
            # The replies came first, and were read: the stream went on after them.
            assert received == ["snapshot-0", "snapshot-1", "snapshot-2"]
            assert conn.errors_received == 5
            assert conn.connects == 1 and not task.done()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert "[1, 2, 3]" in caplog.text


async def test_an_unforeseen_error_is_logged_and_the_controller_dialled_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = StreamServer()
    app = web.Application()
    app.router.add_get("/v1/stream", server.handle)
    token = tmp_path / "token"
    token.write_text("t")
    async with TestServer(app) as ts, aiohttp.ClientSession() as session:
        conn = ControllerConnection(
            str(ts.make_url("/v1/stream")).replace("http", "ws", 1),
            TokenFile(token),
            session,
            backoff=Backoff(initial_s=0.01, max_s=0.05),
        )
        real = conn._session_once
        calls = 0

        async def first_call_breaks(tok: str) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise KeyError("a bug")
            await real(tok)

        conn._session_once = first_call_breaks  # type: ignore[method-assign]
        task = asyncio.get_running_loop().create_task(conn.run())
        try:
            await server.until(lambda: len(server.tokens) == 1)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    assert "stream to" in caplog.text and "KeyError" in caplog.text


def test_a_token_goes_in_clear_only_to_this_machine() -> None:
    assert token_may_go("wss://10.0.0.5:8080/v1/stream")
    assert token_may_go("ws://127.0.0.1:8080/v1/stream")
    assert token_may_go("ws://[::1]:8080/v1/stream")
    assert token_may_go("ws://localhost:8080/v1/stream")
    assert not token_may_go("ws://10.0.0.5:8080/v1/stream")
    assert not token_may_go("ws://controller.example:8080/v1/stream")


async def test_no_token_leaves_without_tls_or_a_usable_ca(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("secret")
    async with aiohttp.ClientSession() as session:
        for url, tls, why in (
            ("ws://192.0.2.10:8080/v1/stream", None, "in clear"),
            ("wss://192.0.2.10:8080/v1/stream", None, "no CA"),
            (
                "wss://192.0.2.10:8080/v1/stream",
                StreamTls(tmp_path / "missing.crt", "x.svc"),
                "not usable",
            ),
        ):
            conn = ControllerConnection(
                url, TokenFile(token), session, backoff=Backoff(initial_s=0.01), tls=tls
            )
            task = asyncio.get_running_loop().create_task(conn.run())
            try:
                async with asyncio.timeout(10):
                    while why not in conn.last_error:
                        conn.changed.clear()
                        await conn.changed.wait()
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert conn.connects == 0
