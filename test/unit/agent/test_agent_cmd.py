"""`aviator agent`'s flags → its configuration (aviator.agent.cmd.config_from)."""

from __future__ import annotations

import argparse

import pytest

from aviator.agent.cmd import add_arguments, config_from
from aviator.agent.config import AgentConfig
from aviator.agent.handoff.executor import HandOffExecutor
from aviator.agent.handoff.select import DEFAULT_QUIET_S


def config(*argv: str) -> AgentConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from(parser.parse_args(["--node", "node-1", *argv]))


def test_the_hand_off_quiet_time_defaults_to_the_executors() -> None:
    executor = HandOffExecutor(table=None, open_diag=lambda inode: None)  # type: ignore[arg-type]
    assert config().handoff_quiet_s == AgentConfig(node="n").handoff_quiet_s
    assert config().handoff_quiet_s == executor.quiet_s == DEFAULT_QUIET_S


def test_the_hand_off_quiet_time_is_a_flag() -> None:
    assert config("--handoff-quiet", "0.01").handoff_quiet_s == 0.01


@pytest.mark.parametrize("value", ["0", "-1", "nan", "soon"])
def test_a_quiet_time_that_is_not_a_positive_number_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        config("--handoff-quiet", value)
    assert "--handoff-quiet" in capsys.readouterr().err


def test_pacing_is_off_unless_a_steady_report_interval_is_given() -> None:
    assert config().steady_report_interval_s == AgentConfig(node="n").steady_report_interval_s == 0
    assert config("--steady-report-interval", "5").steady_report_interval_s == 5.0


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "often"])
def test_a_steady_report_interval_that_is_not_a_finite_number_is_refused(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        config("--steady-report-interval", value)
    assert "--steady-report-interval" in capsys.readouterr().err
