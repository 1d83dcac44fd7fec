"""The box's status file (<workdir>/status.json): how `box status`, `box down` and the
e2e suite find a running box, its kubeconfig, Service addresses and processes."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"


def status_path(workdir: Path) -> Path:
    return workdir / STATUS_FILE


def write_status(workdir: Path, status: dict[str, Any]) -> None:
    """Atomically replace the status file, so readers never see half of it."""
    path = status_path(workdir)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(status, indent=2, sort_keys=True))
    os.replace(tmp, path)


def read_status(workdir: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(status_path(workdir).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_status(workdir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        status_path(workdir).unlink()


def service_address(status: dict[str, Any], service: str, port: str | None = None) -> str | None:
    """'ip:port' of a Service ('ns/name') in the box proxy, by port name (first if None)."""
    ports: dict[str, str] = (status.get("services") or {}).get(service) or {}
    if not ports:
        return None
    if port is None:
        return next(iter(ports.values()))
    return ports.get(port)
