"""The test app (the quick-start's pod) as a local process, for tests and benchmarks
that need a real server in one of its protocols without a box."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator

from aviator.box.files import TESTAPP
from aviator.testing.ports import free_port


@contextlib.contextmanager
def running_app(
    protocol: str, host: str = "127.0.0.1", port: int | None = None, **env: str
) -> Iterator[int]:
    """The test app in `protocol` mode listening on `host`:`port` (a free one if None),
    with `env` (LATENCY, ERROR_RATE, ...); yields its port once it listens, kills it on
    exit."""
    port = port or free_port(host)
    full = {
        "PATH": os.environ["PATH"],
        "PROTOCOL": protocol,
        "PORT": str(port),
        "LISTEN_ADDR": host,
        "POD_NAME": f"{protocol}-pod",
        "DRAIN": "0s",
        **env,
    }
    proc = subprocess.Popen([sys.executable, "-u", str(TESTAPP)], env=full, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()  # the app says so once it listens
        assert b"listening" in line, line
        yield port
    finally:
        proc.kill()
        proc.wait()
