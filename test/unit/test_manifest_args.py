"""The arguments in the workload manifests are ones the `aviator` command accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from aviator import cli

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("manifest", "kind"),
    [("config/manager/controller.yaml", "Deployment"), ("config/agent/agent.yaml", "DaemonSet")],
)
def test_container_args_parse(manifest: str, kind: str) -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / manifest).read_text()) if d]
    (workload,) = [d for d in docs if d["kind"] == kind]
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    args = cli.build_parser(container["args"]).parse_args(container["args"])
    assert args.command == container["args"][0]
