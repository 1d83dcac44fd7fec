"""The alerts (config/prometheus/rules.yaml) and the Grafana dashboard
(config/prometheus/dashboards/aviator.json), checked with promtool built from Go
modules (`make tools`): the rules load, every alert fires and resolves in
`promtool test rules` (alerts_test.yaml), every dashboard query is valid PromQL (the
chart ships the same objects: test_chart.py)."""

from __future__ import annotations

import json
import random
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests_support import ROOT

from aviator.agent.promfold import BucketLayout, error_bound
from aviator.latency.histogram import Histogram
from aviator.testing.promquantile import histogram_quantile

pytestmark = pytest.mark.integration

RULES = ROOT / "config" / "prometheus" / "rules.yaml"
DASHBOARD = ROOT / "config" / "prometheus" / "dashboards" / "aviator.json"
ALERT_TESTS = Path(__file__).parent / "monitoring" / "alerts_test.yaml"
JSON = dict[str, Any]
# Grafana's own variables, replaced by what they stand for so promtool can parse.
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$namespace": ".*",
    "$policy": ".*",
    "$pod": ".*",
    "$agent_job": "aviator-agent",
    "$controller_job": "aviator-controller",
}


def promtool() -> str:
    path = ROOT / "bin" / "promtool"
    if not path.exists():
        pytest.fail("bin/promtool is missing: run `make tools`")
    return str(path)


def run(*args: str) -> str:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def rule_groups() -> JSON:
    return {"groups": yaml.safe_load(RULES.read_text())["spec"]["groups"]}


def alerts() -> dict[str, JSON]:
    return {r["alert"]: r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}


def render(template: str, labels: dict[str, str]) -> str:
    """The `{{ $labels.x }}` templates the rules use (no other template functions)."""
    out = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template)
    assert "{{" not in out, f"unsupported template in {template!r}"
    return out


def test_rules_load(tmp_path: Path) -> None:
    path = tmp_path / "aviator.rules.yaml"
    path.write_text(yaml.safe_dump(rule_groups()))
    run("check", "rules", str(path))


def test_every_alert_fires_and_resolves(tmp_path: Path) -> None:
    rules = tmp_path / "aviator.rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    spec = yaml.safe_load(ALERT_TESTS.read_text())
    spec["rule_files"] = [str(rules)]
    by_name = alerts()
    fired: set[str] = set()
    resolved: set[str] = set()
    for case in spec["tests"]:
        for check in case["alert_rule_test"]:
            name = check["alertname"]
            (fired if check["exp_alerts"] else resolved).add(name)
            for expected in check["exp_alerts"]:
                annotations = by_name[name].get("annotations") or {}
                expected["exp_annotations"] = {
                    k: render(v, expected["exp_labels"]) for k, v in annotations.items()
                }
    assert fired == set(by_name), f"never seen firing: {set(by_name) - fired}"
    assert resolved == set(by_name), f"never seen resolved: {set(by_name) - resolved}"
    tests = tmp_path / "alerts_test.yaml"
    tests.write_text(yaml.safe_dump(spec))
    out = run("test", "rules", str(tests))
    assert "SUCCESS" in out


def test_the_alerts_the_operators_need_exist() -> None:
    assert {
        "AviatorAgentDown",
        "AviatorAgentNotStreaming",
        "AviatorPolicyLatencyStale",
        "AviatorPolicyOverload",
        "AviatorEjectionsHigh",
        "AviatorBPFMapPressure",
        "AviatorControllerNotLeading",
        "AviatorReconcileErrors",
    } <= set(alerts())
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def dashboard_queries() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"])
        for p in dash["panels"]
        if p["type"] != "row"
        for t in p.get("targets", [])
    ]


def promql(expr: str) -> str:
    for var, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(var, value)
    assert "$" not in expr, expr
    return expr


def test_dashboard_is_valid() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "aviator" and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    for panel in dash["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            used = set(re.findall(r"\$(\w+)", t["expr"])) - {"__rate_interval"}
            assert used <= variables, (panel["title"], used - variables)
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("p99", "per-pod", "ejections", "agents up", "workqueue", "leader"):
        assert topic in titles, topic


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses every panel's query (as a recording rule of a throwaway file)."""
    rules = [
        {"record": f"aviator:dashboard_query_{i}", "expr": promql(expr)}
        for i, (_, expr) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    run("check", "rules", str(path))


def test_dashboard_pod_p99_is_the_agents(tmp_path: Path) -> None:
    """The per-pod p99 panel, evaluated by promtool over the buckets the agent exports,
    is within the documented bound of the agent's own p99 and equals what
    aviator.testing.promquantile computes (the unit tests' model of Prometheus)."""
    p99_panel = next(
        expr
        for _, expr in dashboard_queries()
        if "pod_request_duration_seconds_bucket" in expr and "histogram_quantile(0.99" in expr
    )
    rng = random.Random(20)
    # 10,007 requests (rank 9906.93 is never a bucket's count): log-normal around 2 ms.
    hist = Histogram.from_values(int(rng.lognormvariate(7.6, 0.5)) for _ in range(10_007))
    agent_s = (hist.quantile(0.99) or 0) / 1e6
    layout = BucketLayout()
    buckets = layout.fold(hist)
    model_s = histogram_quantile(0.99, buckets)
    name = "aviator_agent_pod_request_duration_seconds_bucket"
    labels = 'job="aviator-agent", pod="ns/web", port="80"'
    spec = {
        "evaluation_interval": "1m",
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                # Counters growing by the folded counts every minute: the rates keep
                # the histogram's shape.
                "input_series": [
                    {"series": f'{name}{{{labels}, le="{le}"}}', "values": f"0+{n:g}x10"}
                    for le, n in buckets
                ],
                "promql_expr_test": [
                    {
                        "expr": f"abs(({promql(p99_panel)}) / {check} - 1) <= bool {tolerance}",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": '{pod="ns/web", port="80"}', "value": 1}],
                    }
                    for check, tolerance in (
                        (agent_s, error_bound(layout.per_octave)),
                        (model_s, 1e-9),
                    )
                ],
            }
        ],
    }
    assert abs(model_s / agent_s - 1) <= error_bound(layout.per_octave)
    tests = tmp_path / "p99_test.yaml"
    tests.write_text(yaml.safe_dump(spec))
    assert "SUCCESS" in run("test", "rules", str(tests))
