"""The PromQL of the canary and autoscaling samples (config/samples/canary_*.yaml,
autoscaling_*.yaml), evaluated by promtool (built from Go modules by `make tools`)
over the series the agents export: per-pod histograms folded as the agent folds them
(aviator/agent/promfold.py) and response/error counters. Each query, with its
templating filled in as Argo Rollouts and Flagger fill it, must pick exactly the
canary's and the stable pods (decoys of other workloads and namespaces are slower and
must not count) and give the p99 ratio and error-rate difference that Prometheus'
algorithm gives over the merged buckets (aviator.testing.promquantile). A canary
without traffic must give NaN in the Argo template (Inconclusive there)."""

from __future__ import annotations

import random
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from manifests_support import ROOT

from aviator.agent.promfold import BucketLayout
from aviator.latency.histogram import Histogram
from aviator.testing.promquantile import histogram_quantile

pytestmark = pytest.mark.integration

SAMPLES = ROOT / "config" / "samples"
LAYOUT = BucketLayout()
BUCKET = "aviator_agent_pod_request_duration_seconds_bucket"
STATUSES = "aviator_agent_pod_response_statuses_total"
ERRORS = "aviator_agent_pod_response_errors_total"


@dataclass(frozen=True)
class Pod:
    hist: Histogram
    statuses: int
    errors: int


def pod(seed: int, median_us: float, requests: int, errors: int) -> Pod:
    rng = random.Random(seed)
    values = (max(1, int(rng.lognormvariate(0, 0.4) * median_us)) for _ in range(requests))
    return Pod(Histogram.from_values(values), requests, errors)


def merged(pods: list[Pod]) -> list[tuple[str, float]]:
    folds = [LAYOUT.fold(p.hist) for p in pods]
    return [(le, sum(f[i][1] for f in folds)) for i, (le, _) in enumerate(folds[0])]


def p99(pods: list[Pod]) -> float:
    return histogram_quantile(0.99, merged(pods))


def error_pct(pods: list[Pod]) -> float:
    return 100 * sum(p.errors for p in pods) / sum(p.statuses for p in pods)


def promtool() -> str:
    path = ROOT / "bin" / "promtool"
    if not path.exists():
        pytest.fail("bin/promtool is missing: run `make tools`")
    return str(path)


def series(pods: dict[str, Pod]) -> list[dict[str, str]]:
    """Counters growing by each pod's counts every minute (rates keep the shapes)."""
    out = []
    for name, p in pods.items():
        labels = f'job="aviator-agent", pod="{name}", port="8080"'
        out += [
            {"series": f'{BUCKET}{{{labels}, le="{le}"}}', "values": f"0+{n:g}x10"}
            for le, n in LAYOUT.fold(p.hist)
        ]
        out.append({"series": f"{STATUSES}{{{labels}}}", "values": f"0+{p.statuses}x10"})
        out.append({"series": f"{ERRORS}{{{labels}}}", "values": f"0+{p.errors}x10"})
    return out


def evaluate(tmp_path: Path, pods: dict[str, Pod], checks: list[str]) -> None:
    """Each check is a PromQL expression that must give exactly one sample, 1."""
    spec = {
        "evaluation_interval": "1m",
        "rule_files": [],
        "tests": [
            {
                "interval": "1m",
                "input_series": series(pods),
                "promql_expr_test": [
                    {"expr": c, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": 1}]}
                    for c in checks
                ],
            }
        ],
    }
    path = tmp_path / "canary_test.yaml"
    path.write_text(yaml.safe_dump(spec, width=10_000))
    done = subprocess.run(
        [promtool(), "test", "rules", str(path)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def close_to(expr: str, value: float) -> str:
    return f"abs(({expr}) / {value!r} - 1) <= bool 1e-9"


def is_nan(expr: str) -> str:
    return f"count(({expr}) != ({expr}))"


def render(text: str, values: dict[str, str], pattern: str) -> str:
    out = re.sub(pattern, lambda m: values[m.group(1)], text)
    assert "{{" not in out, out
    return out


def sample(name: str, kind: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((SAMPLES / name).read_text()) if d]
    return next(d for d in docs if d["kind"] == kind)


CANARY = [pod(1, 3000, 4001, 40)]
STABLE = [pod(2, 2000, 6007, 6), pod(3, 2100, 5003, 5)]
DECOY = pod(4, 90_000, 7001, 700)  # slow, failing: counted anywhere, it shows


def test_argo_rollouts_template(tmp_path: Path) -> None:
    template = sample("canary_argo_rollouts_analysistemplate.yaml", "AnalysisTemplate")
    args = {a["name"]: a.get("value", "") for a in template["spec"]["args"]}
    args |= {"namespace": "shop", "rollout": "web", "canary-hash": "7c9f8", "stable-hash": "5d4b6"}
    queries = {
        m["name"]: render(m["provider"]["prometheus"]["query"], args, r"\{\{args\.([\w-]+)\}\}")
        for m in template["spec"]["metrics"]
    }
    pods = {
        "shop/web-7c9f8-abcde": CANARY[0],
        "shop/web-5d4b6-fghij": STABLE[0],
        "shop/web-5d4b6-klmno": STABLE[1],
        "shop/web2-7c9f8-pqrst": DECOY,  # another rollout
        "other/web-5d4b6-uvwxy": DECOY,  # another namespace
    }
    no_canary = render(
        template["spec"]["metrics"][0]["provider"]["prometheus"]["query"],
        args | {"canary-hash": "0000000"},
        r"\{\{args\.([\w-]+)\}\}",
    )
    ratio = p99(CANARY) / p99(STABLE)
    assert ratio > 1.1  # the canary is the slower: the template's condition fails it
    evaluate(
        tmp_path,
        pods,
        [
            close_to(queries["p99-ratio"], ratio),
            close_to(queries["error-rate-increase"], error_pct(CANARY) - error_pct(STABLE)),
            is_nan(no_canary),
        ],
    )
    conditions = template["spec"]["metrics"][0]
    assert conditions["successCondition"] == "result[0] <= 1 + {{args.max-p99-increase}}"
    assert conditions["failureCondition"] == "result[0] > 1 + {{args.max-p99-increase}}"


def test_flagger_templates(tmp_path: Path) -> None:
    docs = [
        d
        for d in yaml.safe_load_all((SAMPLES / "canary_flagger_metrictemplate.yaml").read_text())
        if d
    ]
    model = {"namespace": "shop", "target": "web", "interval": "2m"}
    queries = {
        d["metadata"]["name"]: render(d["spec"]["query"], model, r"\{\{ (\w+) \}\}") for d in docs
    }
    pods = {
        "shop/web-6f7d9c-abcde": CANARY[0],
        "shop/web-primary-5d4b6-fghij": STABLE[0],
        "shop/web-primary-5d4b6-klmno": STABLE[1],
        "shop/web-api-5d4b6-pqrst": DECOY,  # the Deployment web-api is neither
        "other/web-6f7d9c-uvwxy": DECOY,
    }
    evaluate(
        tmp_path,
        pods,
        [
            close_to(queries["aviator-p99-ratio"], p99(CANARY) / p99(STABLE)),
            close_to(queries["aviator-error-rate-increase"], error_pct(CANARY) - error_pct(STABLE)),
        ],
    )


def test_keda_query(tmp_path: Path) -> None:
    scaled = sample("autoscaling_keda_scaledobject.yaml", "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["metricType"] == "Value"
    pods = {
        "shop/web-6f7d9c-abcde": CANARY[0],
        "shop/web-6f7d9c-fghij": STABLE[0],
        "shop/web-api-6f7d9c-klmno": DECOY,
        "other/web-6f7d9c-uvwxy": DECOY,
    }
    evaluate(
        tmp_path,
        pods,
        [close_to(trigger["metadata"]["query"].strip(), p99([CANARY[0], STABLE[0]]))],
    )
