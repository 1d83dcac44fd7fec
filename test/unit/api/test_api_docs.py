"""docs/api.md's reference tables are generated from the model and kept current."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from aviator.api import cmd
from aviator.api.docs import spec_table, status_table, update_reference
from aviator.api.schema import fields_of
from aviator.api.status import AviatorPolicyStatus

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "api.md"


def test_docs_tables_are_current() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert update_reference(text) == text, (
        "docs/api.md is stale: run `aviator manifests --docs docs/api.md`"
    )


def test_spec_table_has_a_row_per_field_with_its_default() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in spec_table().splitlines()}
    for field, default in [
        ("targetRef.name", "required"),
        ("latencyThreshold", "`100ms`"),
        ("evaluationInterval", "`5s`"),
        ("latencySource", "`ebpf`"),
        ("targetPort", "`8080`"),
        ("probePath", "`/`"),
        ("selection.mode", "`percentage`"),
        ("selection.topN", "`3`"),
        ("selection.percentage", "`50`"),
        ("selection.prequal.rifQuantile", "`0.84`"),
        ("circuitBreaker.enabled", "`false`"),
        ("circuitBreaker.p99Threshold", "`500ms`"),
        ("circuitBreaker.consecutiveViolations", "`3`"),
        ("circuitBreaker.recoveryInterval", "`30s`"),
        ("circuitBreaker.maxEjectionPercent", "`50`"),
        ("dampening.enabled", "`true`"),
        ("dampening.thresholdPercent", "`20`"),
        ("dampening.consecutiveIntervals", "`3`"),
        ("minEndpoints", "`1`"),
        ("routing.mode", "`shadow`"),
    ]:
        assert f" | {default} | " in rows[field], rows.get(field)
    assert "routing.serviceName" in rows


def test_status_table_lists_every_status_field() -> None:
    table = status_table()
    for field in fields_of(AviatorPolicyStatus):
        # An object field is listed by its own fields (takeover.service, ...).
        name = field.info.json
        assert f"| `{name}` |" in table or f"| `{name}." in table, name


def test_missing_block_is_an_error() -> None:
    with pytest.raises(ValueError, match="no generated block 'spec'"):
        update_reference("# nothing here\n")


def test_manifests_refreshes_and_checks_docs(tmp_path: Path) -> None:
    crd = tmp_path / "crd.yaml"
    doc = tmp_path / "api.md"
    doc.write_text(
        "intro\n<!-- BEGIN GENERATED spec -->\nSTALE-PLACEHOLDER\n<!-- END GENERATED spec -->\n"
        "<!-- BEGIN GENERATED status -->\n<!-- END GENERATED status -->\nend\n",
        encoding="utf-8",
    )

    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser()
        cmd.add_arguments(parser)
        return cmd.run(parser.parse_args(list(argv)))

    assert run("--output", str(crd), "--docs", str(doc)) == 0
    assert run("--output", str(crd), "--docs", str(doc), "--check") == 0
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("intro\n") and text.endswith("end\n")
    assert "STALE-PLACEHOLDER" not in text and "| `selection.topN` |" in text
    doc.write_text(text.replace("`3`", "`4`"), encoding="utf-8")
    assert run("--output", str(crd), "--docs", str(doc), "--check") == 1
