"""The loads pods report themselves: which local pods to read, and what they said (pure).

A policy may name a Prometheus gauge its pods already expose (`spec.selection.prequal
.load`: metric, port, path) as prequal's load. The agent reads it only from the local
pods that such a policy's target Service selects (`load_targets`, on the same
selection as the keep-warm targets, aviator.agent.targets), once per report interval
(aviator.agent.loadscraper), and sends what it read in every snapshot
(`Snapshot.loads`).

`gauge_values` reads the Prometheus text exposition: for each wanted metric name, the
sum of its samples (every label set: a model server may expose one series per model);
comment lines, other metrics, malformed lines and values that are not finite numbers at
least 0 are skipped; a wanted metric with no valid sample is absent (not read, never 0).
OpenMetrics' `# EOF` ends the text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass

from aviator.agent.targets import JSON, selected_pods
from aviator.api.codec import PolicyError
from aviator.api.types import AviatorPolicySpec, LoadSpec
from aviator.kube.pods import pod_ips


@dataclass(frozen=True, slots=True)
class LoadTarget:
    """One pod's metrics endpoint and the gauges wanted from it."""

    ip: str
    port: int
    path: str
    metrics: frozenset[str]

    @property
    def url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"http://{host}:{self.port}{self.path}"


def load_spec(policy: JSON) -> LoadSpec | None:
    """The policy's selection.prequal.load, None when unset or the spec is invalid."""
    try:
        return AviatorPolicySpec.from_dict(policy.get("spec")).selection.prequal.load
    except PolicyError:
        return None


def load_targets(
    policies: Iterable[JSON],
    service_for: Callable[[str, str], JSON | None],
    pods: Iterable[JSON],
) -> list[LoadTarget]:
    """The local pods to read a gauge from, one target per (ip, port, path), with every
    metric the policies selecting the pod name there."""
    specs: dict[int, LoadSpec | None] = {}
    wanted: dict[tuple[str, int, str], set[str]] = {}
    for policy, pod in selected_pods(policies, service_for, pods):
        spec = specs.setdefault(id(policy), load_spec(policy))
        ips = pod_ips(pod)
        if spec is None or not ips:
            continue
        wanted.setdefault((ips[0], spec.port, spec.path), set()).add(spec.metric)
    return [LoadTarget(ip, port, path, frozenset(m)) for (ip, port, path), m in wanted.items()]


def gauge_values(text: str, metrics: Collection[str]) -> dict[str, float]:
    """The sum of each wanted metric's samples in a Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            if line.startswith("# EOF"):
                break
            continue
        name, value = _sample(line)
        if name is None or name not in metrics:
            continue
        try:
            number = float(value)
        except ValueError:
            continue
        if math.isfinite(number) and number >= 0:
            out[name] = out.get(name, 0.0) + number
    return {k: v for k, v in out.items() if math.isfinite(v)}


def _sample(line: str) -> tuple[str | None, str]:
    """(metric name, value text) of a sample line; (None, "") when malformed."""
    brace = line.find("{")
    space = line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        name = line[:brace]
        end = _labels_end(line, brace)
        if end is None:
            return None, ""
        rest = line[end + 1 :]
    elif space != -1:
        name, rest = line[:space], line[space:]
    else:
        return None, ""
    fields = rest.split()
    return (name, fields[0]) if name and fields else (None, "")


def _labels_end(line: str, start: int) -> int | None:
    """The index of the `}` closing the label set opened at `start` (quoted values may
    hold braces and escaped quotes)."""
    quoted = False
    i = start + 1
    while i < len(line):
        c = line[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == "}":
            return i
        i += 1
    return None
