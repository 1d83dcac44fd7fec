"""The test app's settings and its answer to one request, whatever the protocol.

`testapp.py` (the entry point) serves HTTP/1.1, `testapp_h2c.py` HTTP/2 without TLS
and `testapp_grpc.py` gRPC; all three ask `App.answer()` how to answer a request, so
latency, distribution and errors behave the same in every mode:

- an error is decided first and answered at once (HTTP 503, gRPC UNAVAILABLE): a
  pod that fails fast, as an overloaded or broken one does;
- otherwise the request waits the latency drawn from the mode, then succeeds; in queue
  mode (`testapp_queue.py`) it first waits for one of the pod's slots.

Settings come from the environment, from `?latency=..&mode=..` queries (the HTTP
`/control` path, the gRPC Control method) and from a control file.
Standard library only: the HTTP/1.1 mode needs nothing else.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
from dataclasses import asdict, dataclass, replace
from urllib.parse import parse_qs, urlsplit

from testapp_queue import Slots

_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(us|µs|ms|s|m)?\s*$")
_UNIT_S = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
MODES = ("fixed", "lognormal", "erratic")
PROTOCOLS = ("http1", "h2c", "grpc")
ERROR_STATUS = 503


def parse_duration(text: str) -> float:
    """'10ms' -> 0.01 seconds; a bare number is milliseconds."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 10ms, 0.5s)")
    value = float(match.group(1))
    unit = match.group(2)
    return value * (_UNIT_S[unit] if unit else 1e-3)


@dataclass(frozen=True)
class Settings:
    latency_s: float = 0.01
    mode: str = "fixed"
    sigma: float = 0.5
    spike_rate: float = 0.05
    spike_factor: float = 20.0
    error_rate: float = 0.0

    def validated(self) -> Settings:
        if self.mode not in MODES:
            raise ValueError(f"MODE must be one of {', '.join(MODES)}, not {self.mode!r}")
        for name in ("spike_rate", "error_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {value}")
        if self.latency_s < 0 or self.sigma < 0 or self.spike_factor < 0:
            raise ValueError("latency, sigma and spike factor must not be negative")
        return self

    def draw_latency_s(self, rng: random.Random) -> float:
        if self.mode == "lognormal":
            return self.latency_s * math.exp(rng.gauss(0.0, self.sigma))
        if self.mode == "erratic" and rng.random() < self.spike_rate:
            return self.latency_s * self.spike_factor
        return self.latency_s

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = asdict(self)
        out["latency"] = f"{self.latency_s * 1000:g}ms"
        return out


def settings_from_env(env: dict[str, str]) -> Settings:
    return Settings(
        latency_s=parse_duration(env.get("LATENCY", "10ms")),
        mode=env.get("MODE", "fixed"),
        sigma=float(env.get("SIGMA", "0.5")),
        spike_rate=float(env.get("SPIKE_RATE", "0.05")),
        spike_factor=float(env.get("SPIKE_FACTOR", "20")),
        error_rate=float(env.get("ERROR_RATE", "0")),
    ).validated()


def settings_from_query(current: Settings, query: str) -> Settings:
    """Apply ?latency=..&mode=..&sigma=..&error_rate=..&spike_rate=..&spike_factor=.."""
    params = {k: v[-1] for k, v in parse_qs(query).items()}
    changes: dict[str, object] = {}
    if "latency" in params:
        changes["latency_s"] = parse_duration(params["latency"])
    if "mode" in params:
        changes["mode"] = params["mode"]
    for name in ("sigma", "error_rate", "spike_rate", "spike_factor"):
        if name in params:
            changes[name] = float(params[name])
    return replace(current, **changes).validated()  # type: ignore[arg-type]


def protocol_from_env(env: dict[str, str]) -> str:
    protocol = env.get("PROTOCOL", "http1")
    if protocol not in PROTOCOLS:
        raise ValueError(f"PROTOCOL must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    return protocol


@dataclass(frozen=True, slots=True)
class Answer:
    """How to answer one request: `ok` False is an injected error (answered at once)."""

    ok: bool
    delay_s: float


class App:
    """The request handler and its run-time settings; counts what it answered."""

    def __init__(self, settings: Settings, name: str, slots: Slots | None = None) -> None:
        self.settings = settings
        self.slots = slots  # queue mode (testapp_queue): None, unlimited
        self.name = name
        self.rng = random.Random()
        self.requests = 0
        self.errors = 0

    async def answer(self) -> Answer:
        """Decide and wait: an injected error at once, else success after the latency."""
        self.requests += 1
        settings = self.settings
        if settings.error_rate and self.rng.random() < settings.error_rate:
            self.errors += 1
            return Answer(False, 0.0)
        delay = settings.draw_latency_s(self.rng)
        if self.slots is None:
            if delay > 0:
                await asyncio.sleep(delay)
            return Answer(True, delay)
        async with self.slots.slot():  # waits its turn: the queue
            if delay > 0:
                await asyncio.sleep(delay)
        return Answer(True, delay)

    def body(self, answer: Answer) -> dict[str, object]:
        if not answer.ok:
            return {"pod": self.name, "error": "injected"}
        return {"pod": self.name, "latency_ms": round(answer.delay_s * 1000, 3)}

    def control(self, query: str | None) -> tuple[int, dict[str, object]]:
        """The settings and counts as JSON; a query (a POST) changes the settings first."""
        if query is not None:
            try:
                self.settings = settings_from_query(self.settings, query)
            except ValueError as err:
                return 400, {"error": str(err)}
        return 200, {
            **self.settings.as_json(),
            "requests": self.requests,
            "errors": self.errors,
        }

    async def handle(self, method: str, target: str) -> tuple[int, dict[str, object]]:
        """An HTTP request (HTTP/1.1 and h2c): /healthz, /control, or a measured one."""
        url = urlsplit(target)
        if url.path == "/healthz":
            return 200, {"status": "ok"}
        if url.path == "/control":
            return self.control(url.query if method == "POST" else None)
        answer = await self.answer()
        return (200 if answer.ok else ERROR_STATUS), self.body(answer)


def read_text(path: str) -> str:
    # A few bytes from a local file: blocking here is cheaper than a thread hop.
    with open(path) as f:
        return f.read().strip()


async def watch_control_file(app: App, base: Settings, path: str) -> None:
    """Apply the control file's settings over the env settings whenever it changes."""
    seen: tuple[float, int] | None = None
    while True:
        try:
            st = os.stat(path)
            stamp: tuple[float, int] | None = (st.st_mtime, st.st_size)
        except OSError:
            stamp = None
        if stamp != seen:
            seen = stamp
            try:
                text = "" if stamp is None else read_text(path)
                app.settings = settings_from_query(base, text)
                print(f"testapp {app.name}: settings {app.settings.as_json()}", flush=True)
            except (OSError, ValueError) as err:
                print(f"testapp {app.name}: control file: {err}", flush=True)
        await asyncio.sleep(0.1)
