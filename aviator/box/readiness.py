"""Waits the box makes before it says Aviator is up: the controller's published stream
CA, and every agent answering /readyz. Each is bounded and fails with what to read."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from aviator.box.identity import AVIATOR_NAMESPACE
from aviator.controller.certs import CA_CONFIGMAP
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import CONFIGMAPS


async def stream_ca(client: KubeClient, path: Path, log: Path, within_s: float = 120.0) -> Path:
    """The controller's stream CA (from the ConfigMap it publishes) written to `path`
    for the agents; waits for the controller to publish it (`log`: where to look if
    it never does)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            cm = await client.get(CONFIGMAPS, CA_CONFIGMAP, AVIATOR_NAMESPACE)
            ca = (cm.get("data") or {}).get("ca.crt")
            if ca:
                await asyncio.to_thread(path.write_text, ca)
                return path
        except ApiError as exc:
            if not exc.not_found:
                raise
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the controller published no stream CA within {within_s:.0f}s (see {log})"
            )
        await asyncio.sleep(0.5)


async def agents_ready(
    ports: dict[str, int], log_of: Callable[[str], Path], within_s: float = 300.0
) -> float:
    """Wait until every node's agent answers /readyz (program loaded, pods synced, a
    first window produced): compiling the eBPF program takes seconds on a quiet machine
    and a minute on a busy one, and a box that says "up" before then measures nothing.
    Returns the seconds it took."""
    began = time.monotonic()
    waiting = set(ports)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while waiting:
            for node in sorted(waiting):
                url = f"https://127.0.0.1:{ports[node]}/readyz"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(url, ssl=False) as answer:
                        if answer.status == 200:
                            waiting.discard(node)
            if not waiting:
                break
            if time.monotonic() - began > within_s:
                logs = ", ".join(str(log_of(n)) for n in sorted(waiting))
                raise RuntimeError(
                    f"agents of {', '.join(sorted(waiting))} not ready within "
                    f"{within_s:.0f}s (see {logs})"
                )
            await asyncio.sleep(0.5)
    return time.monotonic() - began
