"""Aviator's own processes in the box (controller, one agent per node), supervised the
way a Deployment or DaemonSet would be: restarted with back-off when they exit."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from aviator.testing.spawn import die_with_parent

NOT_IMPLEMENTED = "not implemented yet"


def aviator_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "aviator", *args]


@dataclass
class Component:
    """One supervised process. `state`: starting | running | not-implemented |
    restarting | stopped."""

    name: str
    argv: list[str]
    log: Path
    module: str | None = None  # the subcommand's module; missing -> not implemented
    state: str = "stopped"
    restarts: int = 0
    last_exit: int | None = None
    started_at: float = 0.0
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    _task: asyncio.Task[None] | None = field(default=None, repr=False)
    _stopping: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int | None:
        p = self.process
        return p.pid if p is not None and p.returncode is None else None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"component {self.name}")

    async def _supervise(self) -> None:
        if self.module is not None and importlib.util.find_spec(self.module) is None:
            self.state = "not-implemented"
            return
        backoff = 1.0
        while not self._stopping:
            self.state = "starting" if self.restarts == 0 else "running"
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("ab") as out:
                self.process = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=die_with_parent,
                )
            self.started_at = time.monotonic()
            self.state = "running"
            code = await self.process.wait()
            self.last_exit = code
            if self._stopping:
                break
            if code == 2 and NOT_IMPLEMENTED in self.tail():
                self.state = "not-implemented"
                return
            self.state = "restarting"
            if time.monotonic() - self.started_at > 30:
                backoff = 1.0
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 10.0)
            self.restarts += 1
        self.state = "stopped"

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, grace_s: float = 10.0) -> None:
        self._stopping = True
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.state = "stopped"

    def describe(self) -> dict[str, object]:
        return {
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "log": str(self.log),
        }
