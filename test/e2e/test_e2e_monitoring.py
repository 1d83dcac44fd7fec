"""Monitoring and the kubectl plugin against the box running the quick-start.

A real Prometheus (bin/prometheus, built from Go modules by `make tools`) scrapes the
box's controller and agents, inside the box's network namespace where they listen, as
config/prometheus does: HTTPS (the controller's certificate checked against the CA it
publishes, for the stream Service's name; each agent's own certificate unchecked) with
the token of a ServiceAccount bound to the ClusterRole aviator-metrics-reader. A job
without the token must find every endpoint closed.
Every dashboard panel's query returns data, and every metric an alert reads has
series (the alerts firing and resolving is promtool's job: test_monitoring_rules.py).
`kubectl aviator` reads the same policy."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_cluster import REPO, BoxCluster, Cluster
from e2e_scenario import SHADOW, TARGET, Scenario, wait_for

from aviator.box.identity import AVIATOR_NAMESPACE
from aviator.controller.certs import CA_CONFIGMAP
from aviator.latency.tls import STREAM_SERVICE, server_name
from aviator.testing.ports import free_port

pytestmark = pytest.mark.e2e

DASHBOARD = REPO / "config" / "prometheus" / "dashboards" / "aviator.json"
RULES = REPO / "config" / "prometheus" / "rules.yaml"
GRAFANA_VARS = {
    "$__rate_interval": "20s",
    "$namespace": ".*",
    "$policy": ".*",
    "$pod": ".*",
    "$agent_job": "aviator-agent",
    "$controller_job": "aviator-controller",
}
METRICS_READER = "aviator-metrics-reader"  # config/rbac/metrics-reader.yaml
ANONYMOUS_JOB = "aviator-no-token"


def tool(name: str) -> str:
    path = REPO / "bin" / name
    if not path.exists():
        pytest.fail(f"bin/{name} is missing: run `make tools`")
    return str(path)


def in_box(cluster: BoxCluster, *argv: str) -> list[str]:
    """argv run in the box's network namespace (where its components listen)."""
    return ["nsenter", f"--net=/proc/{cluster.status()['pid']}/ns/net", *argv]


def http_addr(pid: int) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    for i, arg in enumerate(args):
        if arg.startswith("--http-addr="):
            return arg.split("=", 1)[1]
        if arg == "--http-addr":
            return args[i + 1]
    raise AssertionError(f"no --http-addr in {args}")


@pytest.fixture
def scraper_token(aviator_cluster: Cluster, namespace: str) -> Iterator[str]:
    """A token of a ServiceAccount (in the test's namespace) bound to the ClusterRole
    aviator-metrics-reader, as a Prometheus' would be."""
    name = f"prometheus-{namespace}"
    aviator_cluster.kubectl("create", "serviceaccount", "prometheus", "-n", namespace)
    aviator_cluster.kubectl(
        "create",
        "clusterrolebinding",
        name,
        f"--clusterrole={METRICS_READER}",
        f"--serviceaccount={namespace}:prometheus",
    )
    try:
        yield aviator_cluster.kubectl(
            "create", "token", "prometheus", "-n", namespace, "--duration=1h"
        ).stdout.strip()
    finally:
        aviator_cluster.kubectl("delete", "clusterrolebinding", name, check=False)


def scrape_config(workdir: Path, box: BoxCluster, token: str) -> dict[str, Any]:
    """config/prometheus/monitor.yaml for the box: its components listen on 127.0.0.1
    ports of its network namespace rather than behind a Service and pods."""
    components = box.status(fresh=True)["components"]
    controller = re.sub(r"^wss?://([^/]+)/.*$", r"\1", box.status()["controller_url"])
    agents = [http_addr(c["pid"]) for n, c in components.items() if n.startswith("agent/")]
    (workdir / "token").write_text(token)
    ca = box.kubectl(
        "get", "configmap", CA_CONFIGMAP, "-n", AVIATOR_NAMESPACE, "-o", r"jsonpath={.data.ca\.crt}"
    ).stdout
    assert "BEGIN CERTIFICATE" in ca, ca
    (workdir / "ca.crt").write_text(ca)
    bearer = {"type": "Bearer", "credentials_file": str(workdir / "token")}
    controller_tls = {
        "ca_file": str(workdir / "ca.crt"),
        "server_name": server_name(STREAM_SERVICE, AVIATOR_NAMESPACE),
    }
    # Each agent's certificate is its own, signed by no CA (as the PodMonitor says).
    agent_tls = {"insecure_skip_verify": True}
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "aviator-controller",
                "scheme": "https",
                "authorization": bearer,
                "tls_config": controller_tls,
                "static_configs": [{"targets": [controller]}],
            },
            {
                "job_name": "aviator-agent",
                "scheme": "https",
                "authorization": bearer,
                "tls_config": agent_tls,
                "static_configs": [{"targets": agents}],
            },
            {
                "job_name": ANONYMOUS_JOB,
                "scheme": "https",
                "tls_config": agent_tls,
                "static_configs": [{"targets": [controller, *agents]}],
            },
        ],
    }


@pytest.fixture
def prometheus(aviator_cluster: Cluster, scraper_token: str) -> Iterator[tuple[BoxCluster, str]]:
    if not isinstance(aviator_cluster, BoxCluster):
        pytest.skip("scrapes the box's components in its network namespace")
    box = aviator_cluster
    workdir = Path(tempfile.mkdtemp(prefix="aviator-prometheus-"))
    config = scrape_config(workdir, box, scraper_token)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = (workdir / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        in_box(
            box,
            tool("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={address}",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        yield box, address
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


async def query(box: BoxCluster, address: str, expr: str) -> list[dict[str, object]]:
    """An instant query through `promtool query instant` in the box's namespace."""
    argv = in_box(
        box, tool("promtool"), "query", "-o", "json", "instant", f"http://{address}", expr
    )
    result = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        return []
    answer = json.loads(result.stdout or "[]")
    return answer if isinstance(answer, list) else []


def promql(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    return expr


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], promql(t["expr"]))
        for p in dash["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def alert_metrics() -> set[str]:
    """The metrics the alerts read (every selector's metric name)."""
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    names: set[str] = set()
    for group in groups:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b((?:aviator|workqueue)_[a-z0-9_]+|up)\{", rule["expr"]))
    return names


async def query_range(
    box: BoxCluster, address: str, expr: str, seconds: int
) -> list[dict[str, Any]]:
    import time

    end = time.time()
    argv = in_box(
        box,
        tool("promtool"),
        "query",
        "-o",
        "json",
        "range",
        f"--start={end - seconds:.0f}",
        f"--end={end:.0f}",
        "--step=2s",
        f"http://{address}",
        expr,
    )
    result = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60
    )
    answer = json.loads(result.stdout or "[]") if result.returncode == 0 else []
    return answer if isinstance(answer, list) else []


async def write_dashboard_png(box: BoxCluster, address: str, out: Path) -> None:
    """docs/dashboard.png (`make dashboard-png`): every panel plotted from this run."""
    from dashboard_png import legend, plot

    panels = json.loads(DASHBOARD.read_text())["panels"]
    data = {}
    for panel in panels:
        if panel["type"] == "row":
            continue
        series = []
        for target in panel["targets"]:
            expr = promql(target["expr"])
            if panel["type"] == "table":
                for row in await query(box, address, expr):
                    series.append((legend("", row.get("metric") or {}), []))  # type: ignore[arg-type]
                continue
            for s in await query_range(box, address, expr, 120):
                points = [(float(t), float(v)) for t, v in s.get("values", [])]
                series.append((legend(target.get("legendFormat", ""), s.get("metric", {})), points))
        data[panel["id"]] = series
    plot(panels, data, out)


async def kubectl_aviator(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    argv = [tool("kubectl"), "aviator", "--kubeconfig", str(cluster.kubeconfig), *args]
    return await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, env=env
    )


async def test_dashboard_alerts_and_plugin_on_the_quickstart(
    quickstart: Scenario, prometheus: tuple[BoxCluster, str]
) -> None:
    box, address = prometheus
    quickstart.apply(
        quickstart.policy(
            # the slow pods (500 ms) violate: ejections_total gets series
            circuitBreaker={
                "enabled": True,
                "p99Threshold": "250ms",
                "consecutiveViolations": 2,
                "recoveryInterval": "1h",
            },
            dampening={"enabled": False},
        )
    )
    quickstart.load(SHADOW)
    quickstart.load(TARGET)
    await quickstart.converge_to_fast(SHADOW, timeout_s=60)

    missing: list[str] = []
    for title, expr in dashboard_queries():
        try:
            await wait_for(
                f"data for {title}: {expr}",
                lambda e=expr: query(box, address, e),  # type: ignore[misc]
                bool,
                timeout_s=90,
            )
        except AssertionError:
            missing.append(f"{title}: {expr}")
    for metric in sorted(alert_metrics()):
        job = "aviator-agent" if metric.startswith("aviator_agent") else "aviator-controller"
        selector = metric if metric == "up" else f'{metric}{{job="{job}"}}'
        if not await query(box, address, selector):
            missing.append(f"alert metric {selector}")
    assert not missing, "no data:\n" + "\n".join(missing)
    # Without the token nothing answers: every endpoint scraped, none up.
    targets = await query(box, address, f'up{{job="{ANONYMOUS_JOB}"}}')
    components = box.status(fresh=True)["components"]
    assert len(targets) == 1 + sum(n.startswith("agent/") for n in components), targets
    assert all(t["value"][1] == "0" for t in targets), targets  # type: ignore[index]
    picture = os.environ.get("AVIATOR_DASHBOARD_PNG")
    if picture:
        await asyncio.sleep(60)  # a minute of history for the picture, not a wait for state
        await write_dashboard_png(box, address, Path(picture))

    ns = quickstart.ns
    status = await kubectl_aviator(box, "status", "-n", ns)
    assert status.returncode == 0 and "e2e-policy" in status.stdout, status.stderr
    explain = await kubectl_aviator(box, "explain", "e2e-policy", "-n", ns)
    assert explain.returncode == 0, explain.stderr
    fast = await quickstart.pods("fast")
    routed = {
        line.split()[0] for line in explain.stdout.splitlines() if re.search(r"\s+in\s+", line)
    }
    assert fast <= routed, explain.stdout
    latency = await kubectl_aviator(box, "latency", TARGET, "-n", ns)
    assert latency.returncode == 0 and all(p in latency.stdout for p in fast), latency.stdout
