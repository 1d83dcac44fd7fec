"""Shared pieces of the traffic and controller benchmarks.

- rows and statistics: `row()`, `percentile()`, `quantiles()`;
- process figures from /proc: `process_cpu_s()`, `process_rss_bytes()`, `CpuMeter`;
- a real control plane with the CRD (`shared_control_plane()`), pods with a hand-written
  status (no kubelet), agent tokens, and the controller as a process
  (`ControllerProcess`) whose /metrics we read;
- simulated agents: `snapshot_json()` and `SimAgent` (the real websocket, a real token);
- `WriteWatch`: counts writes by watching resources (the API server's own view);
- `BoxHandle`: the cluster in a box as a subprocess, reached from the host;
- `OpenLoopClient`: open-loop HTTP/1.1 load at a fixed rate over a connection pool
  where each connection carries a fixed number of requests;
- `plot_over_time()`: a PNG of per-second series (matplotlib, Agg backend).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import uvloop

from aviator.box.process import BoxProcess
from aviator.kube import ApiError, KubeClient
from aviator.kube.resources import NAMESPACES, NODES, PODS, SERVICEACCOUNTS, SERVICES, Resource
from aviator.latency.histogram import bucket_index
from aviator.testing.controlplane import ControlPlane
from aviator.testing.pool import parse_response_head
from aviator.testing.ports import free_port
from aviator.testing.waiting import process_ready

Row = dict[str, object]
JSON = dict[str, Any]

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "bench" / "out"
AGENT_SA = "aviator-agent"


# --- rows and statistics ----------------------------------------------------------------


def row(
    benchmark: str,
    metric: str,
    value: float,
    unit: str,
    *,
    goal: str | None = None,
    ratio: float | None = None,
    note: str | None = None,
) -> Row:
    out: Row = {"benchmark": benchmark, "metric": metric, "value": float(value), "unit": unit}
    if ratio is not None:
        out["ratio"] = float(ratio)
    if goal is not None:
        out["goal"] = goal
    if note is not None:
        out["note"] = note
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (q in [0, 1]) of unsorted values; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def quantiles(values: Sequence[float], qs: Iterable[float]) -> list[float]:
    ordered = sorted(values)
    out = []
    for q in qs:
        if not ordered:
            out.append(math.nan)
            continue
        rank = max(1, math.ceil(q * len(ordered)))
        out.append(ordered[min(rank, len(ordered)) - 1])
    return out


# --- process figures ----------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """CPU seconds a process has run, all its threads, to the nanosecond.

    Read from the process's scheduler clock (a CPU-time clock id, as
    ``clock_getcpuclockid`` makes), not from ``/proc/<pid>/stat``'s user and system
    ticks: those are sampled at the timer tick, so a process that wakes briefly between
    ticks (a steady controller) reads 0 over a short window however much it worked.
    """
    return time.clock_gettime(_process_cpu_clock(pid))


def _process_cpu_clock(pid: int) -> int:
    # Linux's encoding of another process's CPU clock (what glibc's
    # clock_getcpuclockid returns): ~pid << 3, with CPUCLOCK_SCHED (2) for the
    # scheduler's exact runtime; the per-thread bit (4) left clear, so the whole process.
    return ((~pid) << 3) | 2


def process_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass
class CpuMeter:
    """CPU seconds a process used over a span of wall time."""

    pid: int
    cpu0: float = 0.0
    wall0: float = 0.0

    def start(self) -> CpuMeter:
        self.cpu0 = process_cpu_s(self.pid)
        self.wall0 = time.monotonic()
        return self

    def read(self) -> tuple[float, float]:
        """(CPU seconds, wall seconds) since start()."""
        return process_cpu_s(self.pid) - self.cpu0, time.monotonic() - self.wall0


# --- the control plane --------------------------------------------------------------------

_shared: ControlPlane | None = None


def start_control_plane() -> ControlPlane:
    """A private control plane (etcd + kube-apiserver, no controllers) with the
    AviatorPolicy CRD installed; the caller stops it."""
    from aviator.api.crd import build_crd

    cp = ControlPlane(controllers=False).start()
    try:
        cp.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(build_crd()))
        cp.kubectl(
            "wait",
            "--for=condition=Established",
            "crd/aviatorpolicies.aviator.example.com",
            "--timeout=60s",
        )
    except BaseException:
        cp.stop()
        raise
    return cp


def shared_control_plane() -> ControlPlane:
    """One control plane (see start_control_plane) shared by the benchmarks of this
    process that clean up after themselves; stopped by stop_shared() or at exit."""
    global _shared
    if _shared is None:
        cp = start_control_plane()
        atexit.register(cp.stop)
        _shared = cp
    return _shared


async def bounded(jobs: Sequence[Callable[[], Awaitable[object]]], in_flight: int = 48) -> None:
    """Await the jobs (coroutine factories) with at most `in_flight` at once."""
    gate = asyncio.Semaphore(in_flight)

    async def one(job: Callable[[], Awaitable[object]]) -> None:
        async with gate:
            await job()

    await asyncio.gather(*(one(j) for j in jobs))


async def new_namespace(kube: KubeClient, prefix: str) -> str:
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    await kube.create(
        NAMESPACES, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
    )
    # No controller-manager: the ServiceAccounts pods and agents need are ours to make.
    for name in ("default", AGENT_SA):
        await kube.create(
            SERVICEACCOUNTS,
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            ns,
        )
    return ns


def bench_node(i: int) -> str:
    """The name of the i-th node pods are spread over (see create_ready_pods)."""
    return f"bench-node-{i}"


async def agent_token(
    kube: KubeClient, ns: str, name: str = AGENT_SA, *, node: str = "bench-node-0"
) -> str:
    """A token of `ns:name` bound to the Node `node` (created when missing): the
    controller takes what an agent with it sends for `node`'s pods only."""
    with contextlib.suppress(ApiError):  # exists already
        await kube.create(NODES, {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})
    uid = (await kube.get(NODES, node))["metadata"]["uid"]
    answer = await kube.request(
        "POST",
        SERVICEACCOUNTS.path(ns, name, "token"),
        body={
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": 3600,
                "boundObjectRef": {"kind": "Node", "apiVersion": "v1", "name": node, "uid": uid},
            },
        },
    )
    return str(answer["status"]["token"])


async def create_service(
    kube: KubeClient, ns: str, name: str, selector: dict[str, str], *, headless: bool = False
) -> None:
    """A Service on port 80 → 8080; headless ones (and Aviator's shadows of them) need no
    cluster IP, of which a test control plane has only a few hundred."""
    spec: JSON = {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    if headless:
        spec["clusterIP"] = "None"
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }
    await kube.create(SERVICES, body, ns)


def pod_status(ip: str, ready: bool) -> JSON:
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flag = "True" if ready else "False"
    return {
        "phase": "Running",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "hostIP": "192.0.2.1",
        "startTime": now,
        "conditions": [
            {"type": "Ready", "status": flag, "lastTransitionTime": now},
            {"type": "ContainersReady", "status": flag, "lastTransitionTime": now},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        ],
    }


async def set_pod_ready(kube: KubeClient, ns: str, name: str, ip: str, ready: bool) -> None:
    """Write the status a kubelet would (there is none here), via the status subresource."""
    await kube.patch(PODS, name, {"status": pod_status(ip, ready)}, ns, subresource="status")


async def create_ready_pods(
    kube: KubeClient,
    ns: str,
    pods: Sequence[tuple[str, str]],
    labels: dict[str, str],
    nodes: int = 1,
    first: int = 0,
) -> None:
    """Create pods (name, ip) spread over `nodes` node names, then mark them Running/Ready.
    `first` is the fleet index of pods[0]: pod k of the fleet runs on node k % nodes, the
    same wherever a batch starts, so an agent per node reports exactly its node's pods."""

    async def one(i: int, name: str, ip: str) -> None:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {
                "nodeName": bench_node((first + i) % nodes),
                "containers": [
                    {
                        "name": "app",
                        "image": "example.invalid/app:1",
                        "ports": [{"name": "http", "containerPort": 8080}],
                    }
                ],
            },
        }
        await kube.create(PODS, body, ns)
        await set_pod_ready(kube, ns, name, ip, True)

    await bounded([functools.partial(one, i, n, ip) for i, (n, ip) in enumerate(pods)])


def pod_ip(i: int, base: int = 10) -> str:
    """Distinct IPv4 addresses in 10.<base>.0.0/16 onwards for pod number i."""
    return f"10.{base + i // 65025}.{(i // 255) % 255}.{i % 255 + 1}"


def policy_body(name: str, target: str, **spec: Any) -> JSON:
    return {
        "apiVersion": "aviator.example.com/v1alpha1",
        "kind": "AviatorPolicy",
        "metadata": {"name": name},
        "spec": {"targetRef": {"kind": "Service", "name": target}, **spec},
    }


# --- the controller as a process ----------------------------------------------------------


class AviatorProcess:
    """`python -m aviator COMMAND ARGS` in a subprocess serving plain HTTP on a free
    127.0.0.1 port, its output in a temporary log; it never outlives the benchmark."""

    def __init__(self, command: str, args: list[str], what: str) -> None:
        self.port = free_port()
        self.what = what
        fd, log_path = tempfile.mkstemp(prefix=f"aviator-bench-{command}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log_path)
        argv = [
            sys.executable,
            "-m",
            "aviator",
            command,
            "--secure-serving=false",  # plain HTTP on 127.0.0.1
            "--http-addr",
            f"127.0.0.1:{self.port}",
            *args,
        ]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.pid = self.process.pid
        atexit.register(self.stop)  # never outlive the benchmark, whatever fails

    async def wait_ready(self, within_s: float = 120.0) -> None:
        await process_ready(
            self.process,
            f"http://127.0.0.1:{self.port}/readyz",
            self.log_path,
            within=within_s,
            what=self.what,
        )

    async def get_text(self, path: str) -> str:
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{self.port}{path}") as resp,
        ):
            return await resp.text()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        atexit.unregister(self.stop)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_path.unlink(missing_ok=True)


class ControllerProcess(AviatorProcess):
    """`aviator controller` in a subprocess against a kubeconfig; metrics over HTTP."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        *,
        window_s: float = 3.0,
        stale_after_s: float = 5.0,
        workers: int = 4,
        extra: Sequence[str] = ("--no-leader-elect",),
    ) -> None:
        args = [
            "--kubeconfig",
            str(kubeconfig),
            "--namespace",
            namespace,
            *extra,
            "--workers",
            str(workers),
            "--agent-service-account",
            f"{namespace}:{AGENT_SA}",
            "--latency-window",
            str(window_s),
            "--latency-stale-after",
            str(stale_after_s),
            "--log-level",
            "warning",
        ]
        super().__init__("controller", args, "the benchmark's controller")
        self.url = f"ws://127.0.0.1:{self.port}/v1/stream"

    async def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as "name{label=value,...}" → value. Parsed on a
        thread: a large fleet's /metrics (tens of thousands of series) takes the parser
        seconds, and on the event loop it would hold back the simulated agents' reports
        sharing it, which the controller would rightly see as late."""
        text = await self.get_text("/metrics")
        return await asyncio.to_thread(parse_metrics, text)


def parse_metrics(text: str) -> dict[str, float]:
    """Every sample of a /metrics text as "name{label=value,...}" → value."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = float(s.value)
    return out


def metric_sum(metrics: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for key, value in metrics.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        have = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        if all(have.get(k) == v for k, v in labels.items()):
            total += value
    return total


# --- simulated agents -----------------------------------------------------------------------


def snapshot_json(
    node: str,
    endpoints: Iterable[tuple[str, float]],
    samples: int = 50,
    window_s: float = 1.0,
    pods: Mapping[str, str] | None = None,
) -> str:
    """A v1 snapshot: every (ip, latency in ms) as `samples` requests of that latency;
    `pods` names the pod ("ns/name") at an IP, as a real agent does for the pods it
    knows (None: the agent names none)."""
    eps = []
    for ip, ms in endpoints:
        us = max(1, int(ms * 1000))
        eps.append(
            {
                "ip": ip,
                "port": 8080,
                "role": "server",
                "pod": None if pods is None else pods.get(ip),
                "hist": {str(bucket_index(us)): samples},
                "count": samples,
                "sum_us": us * samples,
                "max_us": us,
                "rif": 0,
                "aborted": 0,
            }
        )
    return json.dumps(
        {
            "v": 1,
            "kind": "snapshot",
            "node": node,
            "source": "ebpf",
            "time": time.time(),
            "window_s": window_s,
            "endpoints": eps,
        },
        separators=(",", ":"),
    )


class SimAgent:
    """One agent's websocket to the controller, authenticated with a real token. Its
    connection leaves from `source` when given (a loopback address: one per simulated
    node, as real nodes have, since the controller rations token reviews per address)."""

    def __init__(self, url: str, token: str, source: str | None = None) -> None:
        self.url = url
        self.token = token
        self.source = source
        self.sent = 0
        self.errors: list[str] = []  # the controller's error frames, as an agent logs them
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None

    CONNECT_WITHIN_S = 300.0  # dialling again after 429s, as long as this

    async def __aenter__(self) -> SimAgent:
        local = (self.source, 0) if self.source is not None else None
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=local))
        deadline = time.monotonic() + self.CONNECT_WITHIN_S
        while True:
            try:
                self._ws = await self._session.ws_connect(
                    self.url, headers={"Authorization": f"Bearer {self.token}"}, max_msg_size=0
                )
                # An agent reads its stream: error frames, and the controller's pings,
                # which go unanswered (and the controller closes the stream) otherwise.
                self._reader = asyncio.create_task(self._read(self._ws))
                return self
            except aiohttp.WSServerHandshakeError as exc:
                # Token reviews are rationed (429 + Retry-After) when a whole fleet
                # connects at once; an agent backs off and dials again, so does this.
                if exc.status != 429 or time.monotonic() > deadline:
                    await self._session.close()
                    raise
                headers = exc.headers if isinstance(exc.headers, Mapping) else {}
                retry = str(headers.get("Retry-After", "1"))
                await asyncio.sleep(float(retry) if retry.isdigit() else 1.0)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT:
                self.errors.append(str(msg.data)[:200])

    async def __aexit__(self, *exc: object) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()

    async def send(self, text: str) -> None:
        assert self._ws is not None
        await self._ws.send_str(text)
        self.sent += 1


# --- counting writes -------------------------------------------------------------------------


class WriteWatch:
    """Counts ADDED/MODIFIED/DELETED events of some resources in a namespace: every write
    the API server accepted, whoever made it."""

    def __init__(
        self,
        kube: KubeClient,
        ns: str,
        resources: Sequence[Resource],
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> None:
        self.kube = kube
        self.ns = ns
        self.resources = resources
        self.selectors: dict[str, str | int | bool] = {}
        if label_selector:
            self.selectors["labelSelector"] = label_selector
        if field_selector:
            self.selectors["fieldSelector"] = field_selector
        self.counts: Counter[str] = Counter()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> WriteWatch:
        for res in self.resources:
            listed = await self.kube.list(res, self.ns, params={**self.selectors, "limit": 1})
            rv = str((listed.get("metadata") or {}).get("resourceVersion", ""))
            self._tasks.append(asyncio.create_task(self._watch(res, rv)))
        return self

    async def _watch(self, res: Resource, rv: str) -> None:
        params: dict[str, str | int | bool] = {
            "resourceVersion": rv,
            "timeoutSeconds": 3600,
            **self.selectors,
        }
        async for ev in self.kube.watch(res.path(self.ns), params):
            if ev.get("type") in ("ADDED", "MODIFIED", "DELETED"):
                self.counts[res.kind] += 1

    def total(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> Counter[str]:
        return Counter(self.counts)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


# --- the cluster in a box ----------------------------------------------------------------------


def box_unavailable() -> str | None:
    """Why the box cannot run here, or None."""
    if os.geteuid() != 0:
        return "the cluster in a box needs root (its own network namespace)"
    if shutil.which("ip") is None:
        return "the cluster in a box needs iproute2 (`ip`)"
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl"):
        if not (REPO / "bin" / name).exists():
            return f"bin/{name} is missing: run `make controlplane`"
    return None


class BoxHandle(BoxProcess):
    """`aviator box up` in a subprocess; Services through the box proxy's host addresses,
    pod latency through the test app's control file."""

    def __init__(self, start_timeout_s: float = 420.0, args: list[str] | None = None) -> None:
        super().__init__(
            cwd=REPO, args=args, start_timeout_s=start_timeout_s, prefix="aviator-bench-box-"
        )

    def aviator_problem(self) -> str | None:
        """None when the CRD, controller and agents run; otherwise what does not."""
        status = self.status()
        if not str(status.get("crd", "")).startswith("installed"):
            return f"AviatorPolicy CRD: {status.get('crd')}"
        components = status.get("components") or {}
        if not components:
            return "no Aviator components in the box"
        for name, comp in components.items():
            if comp.get("state") != "running":
                return f"{name} is {comp.get('state')} (log {comp.get('log')})"
        return None

    async def wait_aviator(self, timeout_s: float = 30.0) -> str | None:
        """Wait for the controller and agents to run; None, or what does not."""
        deadline = time.monotonic() + timeout_s
        while True:
            problem = self.aviator_problem()
            if problem is None or time.monotonic() > deadline:
                return problem
            await asyncio.sleep(0.5)

    async def wait_address(
        self, namespace: str, service: str, timeout_s: float = 60
    ) -> tuple[str, int]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            address = self.address(namespace, service)
            if address is not None:
                return address
            await asyncio.sleep(0.25)
        raise RuntimeError(f"no box proxy address for {namespace}/{service}")

    def kubectl(self, *args: str, input: str | None = None) -> str:
        argv = [str(REPO / "bin" / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args]
        done = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout


_shared_box: BoxHandle | None = None


def shared_box() -> BoxHandle:
    """One box for the benchmarks of this process (each uses its own namespace and
    deletes it when done); stopped by stop_shared() or at exit."""
    global _shared_box
    if _shared_box is None:
        box = BoxHandle().start()
        atexit.register(box.stop)
        _shared_box = box
    return _shared_box


def stop_shared() -> None:
    """Stop the shared box and control plane now, not at exit: a process that runs
    benchmarks among other work (the smoke tests in `make test`) must not keep them,
    their agents' eBPF programs included, running through the rest of it."""
    global _shared, _shared_box
    if _shared_box is not None:
        atexit.unregister(_shared_box.stop)
        _shared_box.stop()
        _shared_box = None
    if _shared is not None:
        atexit.unregister(_shared.stop)
        _shared.stop()
        _shared = None


def in_shared_box(
    name: str, namespace: str, body: Callable[[BoxHandle], Coroutine[Any, Any, list[Row]]]
) -> list[Row]:
    """`body` on the shared box, its namespace deleted afterwards; one "skipped" row
    when the box cannot run here."""
    reason = box_unavailable()
    if reason:
        return [row(name, "skipped", 0.0, "", note=reason)]
    box = shared_box()
    try:
        return uvloop.run(body(box))
    finally:
        box.kubectl("delete", "namespace", namespace, "--wait=false")


def deployment(
    name: str,
    labels: dict[str, str],
    replicas: int,
    latency: str,
    readiness_period_s: int = 10,
    protocol: str = "http1",
) -> JSON:
    """Test-app pods speaking `protocol` (the test app's PROTOCOL). Readiness probes
    (GET /healthz, answered at once; a TCP connect for gRPC, which serves no HTTP/1.1)
    are traffic the agent measures too; the period is Kubernetes' default unless told
    otherwise."""
    probe: JSON = (
        {"tcpSocket": {"port": "http"}}
        if protocol == "grpc"
        else {"httpGet": {"path": "/healthz", "port": "http"}}
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "terminationGracePeriodSeconds": 2,
                    "containers": [
                        {
                            "name": "app",
                            "image": "aviator-testapp:latest",
                            "env": [
                                {"name": "LATENCY", "value": latency},
                                {"name": "DRAIN", "value": "0s"},
                                {"name": "PROTOCOL", "value": protocol},
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                },
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {**probe, "periodSeconds": readiness_period_s},
                        }
                    ],
                },
            },
        },
    }


def service_manifest(name: str, selector: dict[str, str]) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}],
        },
    }


# --- open-loop load -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it was due (monotonic), its latency from then, and who served it."""

    at: float
    latency_s: float
    ok: bool
    served_by: str | None
    error: str | None = None


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: int = 0
    served_by: str | None = None


@dataclass
class OpenLoopClient:
    """Requests arrive at `rate_per_s` (Poisson, seeded) whatever the answers do; each takes
    an idle pooled connection or opens a new one, and a connection is closed after
    `requests_per_connection` requests (so new connections arrive at about
    rate / requests_per_connection per second, each balanced anew by a Service proxy).
    Latency counts from when a request was due, so queueing on the client side is not
    hidden (no coordinated omission). A request that exceeds `timeout_s` fails and its
    connection is dropped."""

    address: Callable[[], tuple[str, int]]
    rate_per_s: float
    requests_per_connection: int = 10
    timeout_s: float = 5.0
    seed: int = 1
    samples: list[Sample] = field(default_factory=list)
    connections_opened: int = 0
    _idle: list[_Conn] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, duration_s: float) -> list[Sample]:
        """Send for `duration_s`, then wait for the answers still due; the samples of this run."""
        rng = random.Random(self.seed)
        first = len(self.samples)
        start = time.monotonic()
        due = start
        end = start + duration_s
        while True:
            due += rng.expovariate(self.rate_per_s)
            if due >= end:
                break
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self._one(due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        return self.samples[first:]

    async def close(self) -> None:
        for conn in self._idle:
            conn.writer.close()
        self._idle.clear()

    async def _one(self, due: float) -> None:
        conn: _Conn | None = None
        try:
            async with asyncio.timeout(self.timeout_s - (time.monotonic() - due)):
                conn = self._idle.pop() if self._idle else await self._open()
                status, served_by = await self._exchange(conn)
            ok = status == 200
            self.samples.append(
                Sample(
                    due, time.monotonic() - due, ok, served_by, None if ok else f"status {status}"
                )
            )
            conn.used += 1
            if conn.used >= self.requests_per_connection or not ok:
                conn.writer.close()
            else:
                self._idle.append(conn)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as err:
            served = conn.served_by if conn is not None else None
            self.samples.append(
                Sample(due, time.monotonic() - due, False, served, type(err).__name__)
            )
            if conn is not None:
                conn.writer.close()

    async def _open(self) -> _Conn:
        host, port = self.address()
        reader, writer = await asyncio.open_connection(host, port)
        self.connections_opened += 1
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn) -> tuple[int, str | None]:
        conn.writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        head = await conn.reader.readuntil(b"\r\n\r\n")
        status, length, served_by = parse_response_head(head)
        conn.served_by = served_by or conn.served_by
        if length:
            await conn.reader.readexactly(length)
        return status, conn.served_by


def latency_rows(
    benchmark: str, label: str, samples: Sequence[Sample], note: str | None = None
) -> tuple[list[Row], dict[str, float]]:
    """p50/p99/p99.9 rows (ms) of the samples (failures count at their time-out latency)."""
    lat = [s.latency_s * 1000 for s in samples]
    p50, p99, p999 = quantiles(lat, (0.5, 0.99, 0.999))
    figures = {"p50": p50, "p99": p99, "p99.9": p999}
    rows = [row(benchmark, f"{label} client {k}", v, "ms", note=note) for k, v in figures.items()]
    return rows, figures


# --- plots -----------------------------------------------------------------------------------------


def plot_over_time(
    path: Path,
    title: str,
    panels: Sequence[tuple[str, dict[str, Sequence[tuple[float, float]]]]],
    markers: Sequence[tuple[float, str]] = (),
) -> Path:
    """Panels of named (t, y) series sharing the time axis; vertical lines at markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(11, 3.2 * len(panels)), sharex=True)
    axes_list = list(axes) if len(panels) > 1 else [axes]
    for ax, (ylabel, series) in zip(axes_list, panels, strict=True):
        for name, points in series.items():
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, label=name, linewidth=1.2)
        for x, text in markers:
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8)
            ax.text(x, ax.get_ylim()[1], f" {text}", va="top", fontsize=8, color="grey")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4, loc="upper right")
    axes_list[-1].set_xlabel("seconds")
    axes_list[0].set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
