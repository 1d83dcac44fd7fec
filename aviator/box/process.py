"""`aviator box up` as a child process, for the e2e suite and the benchmarks.

What a caller in the host network needs of a running box, all read from its status file
and working directory: when it is up, its kubeconfig, the box proxy's host address of a
Service and how many endpoints it spreads a Service over, and a pod's latency (the test
app's control file). Started and stopped as a process group, so nothing it started
outlives it; stopped too (SIGTERM) when the process that started it dies without
stopping it, so a killed test run leaves no box behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Self

from aviator.box.state import status_path
from aviator.testing.spawn import spawn

STATUS_CACHE_S = 0.25  # status() re-reads the file at most this often unless fresh=True


class BoxProcess:
    """`aviator box up --workdir W ARGS` run from `cwd`, or a box someone already runs
    in `workdir` (then start() only waits for it and stop() leaves it alone)."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        args: list[str] | None = None,
        cwd: Path | None = None,
        start_timeout_s: float = 420.0,
        keep_workdir: bool = False,
        prefix: str = "aviator-box-",
    ) -> None:
        self.reuse = workdir is not None
        self.args = args or []
        self.cwd = cwd
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=prefix))
        self.kubeconfig = self.workdir / "kubeconfig"
        self.start_timeout_s = start_timeout_s
        self.keep_workdir = keep_workdir
        self.process: subprocess.Popen[bytes] | None = None
        self._status: dict[str, Any] = {}
        self._status_read = -STATUS_CACHE_S

    def start(self) -> Self:
        if not self.reuse:
            with (self.workdir / "box.log").open("ab") as log:
                # Stopped (SIGTERM: it stops what it started) if this process dies
                # without calling stop(): a killed test run leaves no box running.
                self.process = spawn(
                    [
                        sys.executable,
                        "-m",
                        "aviator.box",
                        "up",
                        "--workdir",
                        str(self.workdir),
                        *self.args,
                    ],
                    cwd=self.cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                    death_signal=signal.SIGTERM,
                )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.status(fresh=True).get("phase") == "running":
                return self
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"aviator box up exited:\n{self.log_tail()}")
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(
            f"the box did not come up in {self.start_timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        proc = self.process
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if not self.reuse and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            text = (self.workdir / "box.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def status(self, fresh: bool = False) -> dict[str, Any]:
        """The box's status file (aviator/box/state.py); {} until it exists."""
        now = time.monotonic()
        if fresh or now - self._status_read >= STATUS_CACHE_S:
            with contextlib.suppress(OSError, ValueError):
                self._status = dict(json.loads(status_path(self.workdir).read_text()))
            self._status_read = now
        return self._status

    def address(self, namespace: str, service: str) -> tuple[str, int] | None:
        """The box proxy's host address of the Service's first port, once it has one."""
        ports = (self.status().get("services") or {}).get(f"{namespace}/{service}")
        if not ports:
            return None
        host, _, port = str(next(iter(ports.values()))).rpartition(":")
        return host, int(port)

    def zone_address(self, zone: str, namespace: str, service: str) -> tuple[str, int] | None:
        """The Service's first port as clients on a node of `zone` reach it (a box up
        with --zones): connections there follow the endpoints' zone hints."""
        zones = self.status().get("zone_services") or {}
        ports = (zones.get(zone) or {}).get(f"{namespace}/{service}")
        if not ports:
            return None
        host, _, port = str(next(iter(ports.values()))).rpartition(":")
        return host, int(port)

    def zone_backend_count(self, zone: str, namespace: str, service: str) -> int:
        """The fewest endpoints clients in `zone` are spread over, on any port."""
        zones = self.status(fresh=True).get("zone_backends") or {}
        ports = (zones.get(zone) or {}).get(f"{namespace}/{service}")
        return min((int(n) for n in (ports or {}).values()), default=0)

    def backend_count(self, namespace: str, service: str, *, kube_proxy: bool = False) -> int:
        """The fewest endpoints the box proxy (`kube_proxy`: kube-proxy's rules, in a box
        run with `--proxy kube-proxy`) spreads any port of the Service over."""
        key = "kube_proxy_backends" if kube_proxy else "backends"
        ports = (self.status(fresh=True).get(key) or {}).get(f"{namespace}/{service}")
        return min((int(n) for n in (ports or {}).values()), default=0)

    def set_pod_latency(self, namespace: str, pod: str, latency: str | None) -> None:
        """Turn a test-app pod's latency to `latency` ("500ms"), or back (None)."""
        self.set_pod_controls(namespace, pod, None if latency is None else f"latency={latency}")

    def set_pod_controls(self, namespace: str, pod: str, query: str | None) -> None:
        """Set a test-app pod's run-time settings to `query` (the test app's control
        query string, "latency=2s&error_rate=0.5"), or back to its env settings (None)."""
        control = self.workdir / "pods" / f"{namespace}_{pod}_app.control"
        if query is None:
            control.unlink(missing_ok=True)
        else:
            tmp = control.with_suffix(".tmp")
            tmp.write_text(query)
            os.replace(tmp, control)
