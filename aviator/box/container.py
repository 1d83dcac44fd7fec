"""One container of a box pod: a local process, its restarts and its readiness probe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from aviator.box.files import TESTAPP
from aviator.box.podspec import ContainerPlan, Probe
from aviator.box.podstatus import ContainerState, now_rfc3339
from aviator.testing.spawn import die_with_parent

MAX_BACKOFF_S = 30.0


def port_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
        except OSError:
            return False
        return True


async def probe_once(probe: Probe, pod_ip: str, source: str | None = None) -> bool:
    """One readiness check: HTTP status 200-399, or a TCP connect, within the timeout;
    from `source` when given (the node's address, as a kubelet's probes come from)."""
    host = probe.host or pod_ip
    local = (source, 0) if source else None
    try:
        async with asyncio.timeout(probe.timeout_s):
            reader, writer = await asyncio.open_connection(host, probe.port, local_addr=local)
            try:
                if probe.kind == "tcp":
                    return True
                writer.write(
                    f"GET {probe.path} HTTP/1.1\r\nHost: {host}:{probe.port}\r\n"
                    f"User-Agent: aviator-box-probe\r\nConnection: close\r\n\r\n".encode()
                )
                await writer.drain()
                status_line = await reader.readline()
                parts = status_line.split()
                return len(parts) >= 2 and 200 <= int(parts[1]) < 400
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False


class ContainerRunner:
    """Runs a container's process, restarts it with back-off when it exits (restart
    policy Always), and tracks readiness from its probe. `on_change` is called
    whenever what the pod status would show changes."""

    def __init__(
        self,
        plan: ContainerPlan,
        pod_ip: str,
        log_path: Path,
        on_change: Callable[[], None],
        argv: list[str] | None = None,
        probe_from: str | None = None,
    ) -> None:
        self.plan = plan
        self.pod_ip = pod_ip
        self.probe_from = probe_from
        self.log_path = log_path
        self.on_change = on_change
        self.argv = argv or [sys.executable, "-u", str(TESTAPP)]
        self.process: asyncio.subprocess.Process | None = None
        self.running = False
        self.ready = False
        self.started_at: str | None = None
        self.restart_count = 0
        self.last_exit_code: int | None = None
        self.waiting_reason: str | None = "ContainerCreating"
        self._task: asyncio.Task[None] | None = None

    def state(self) -> ContainerState:
        return ContainerState(
            name=self.plan.name,
            image=self.plan.image,
            running=self.running,
            ready=self.ready,
            started_at=self.started_at,
            restart_count=self.restart_count,
            pid=self.process.pid if self.process and self.running else None,
            waiting_reason=self.waiting_reason,
            last_exit_code=self.last_exit_code,
        )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"container {self.plan.name}")

    async def _run(self) -> None:
        backoff = 1.0
        while True:
            began = time.monotonic()
            await self._spawn()
            probe = asyncio.create_task(self._probe_loop())
            assert self.process is not None
            code = await self.process.wait()
            probe.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe
            self.running = self.ready = False
            self.last_exit_code = code
            self.waiting_reason = "CrashLoopBackOff"
            self.on_change()
            if time.monotonic() - began > 60:
                backoff = 1.0
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)
            self.restart_count += 1

    async def _spawn(self) -> None:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONDONTWRITEBYTECODE": "1"}
        env.update(self.plan.env)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # terminal signals are the box's to forward
                preexec_fn=die_with_parent,
            )

    async def _wait_listening(self) -> None:
        # "Started" in the box means the process accepts connections on its port.
        ports = self.plan.ports
        while True:
            ok = True
            for port in ports:
                try:
                    _, writer = await asyncio.open_connection(self.pod_ip, port)
                    writer.close()
                except OSError:
                    ok = False
                    break
            if ok:
                return
            await asyncio.sleep(0.05)

    async def _probe_loop(self) -> None:
        await self._wait_listening()
        self.running = True
        self.waiting_reason = None
        self.started_at = now_rfc3339()
        probe = self.plan.readiness
        if probe is None:
            self.ready = True
            self.on_change()
            return
        self.on_change()
        await asyncio.sleep(probe.initial_delay_s)
        successes = failures = 0
        while True:
            ok = await probe_once(probe, self.pod_ip, self.probe_from)
            if ok:
                successes, failures = successes + 1, 0
                if not self.ready and successes >= probe.success_threshold:
                    self.ready = True
                    self.on_change()
            else:
                successes, failures = 0, failures + 1
                if self.ready and failures >= probe.failure_threshold:
                    self.ready = False
                    self.on_change()
            await asyncio.sleep(probe.period_s)

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after the grace period; no restart afterwards."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.running = self.ready = False
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(grace_s, 0.0))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    def kill_now(self) -> None:
        """Synchronous last resort (box shutting down in a hurry)."""
        if self._task is not None:
            self._task.cancel()
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
