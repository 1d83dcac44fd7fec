from __future__ import annotations

import argparse
import os
import socket

import pytest

from aviator.controller.app import default_identity
from aviator.controller.cmd import add_arguments, options_from


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("argv", "leader_elect"),
    [
        ((), True),
        (("--leader-elect",), True),
        (("--leader-elect=false",), False),
        (("--leader-elect", "true"), True),
        (("--no-leader-elect",), False),
    ],
)
def test_leader_elect_forms(argv: tuple[str, ...], leader_elect: bool) -> None:
    assert options_from(parse(*argv)).leader_elect is leader_elect


def test_defaults_and_repeatables(monkeypatch: pytest.MonkeyPatch) -> None:
    opts = options_from(parse())
    assert (opts.http_host, opts.http_port, opts.workers) == ("0.0.0.0", 8080, 4)
    assert (opts.lease_duration, opts.renew_deadline, opts.retry_period) == (15.0, 10.0, 2.0)
    assert opts.agent_service_accounts == ("aviator-system:aviator-agent",)
    opts = options_from(
        parse(
            "--http-addr=[::1]:9090",
            "--agent-service-account=a:b",
            "--agent-service-account=c:d",
            "--agent-token-audience=aviator",
        )
    )
    assert (opts.http_host, opts.http_port) == ("::1", 9090)
    assert opts.agent_service_accounts == ("a:b", "c:d")
    assert opts.agent_audiences == ("aviator",)


def test_bad_values_are_refused() -> None:
    with pytest.raises(SystemExit):
        parse("--http-addr=nope")
    with pytest.raises(SystemExit):
        parse("--leader-elect=maybe")
    for rate in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            parse(f"--stream-messages-per-second={rate}")


def test_the_message_rate_of_agent_streams() -> None:
    assert options_from(parse()).stream_limits.messages_per_s == 5.0
    limits = options_from(parse("--stream-messages-per-second", "50")).stream_limits
    assert (limits.messages_per_s, limits.messages_burst) == (50.0, 200)


@pytest.mark.parametrize(
    ("argv", "sharding"),
    [
        ((), False),
        (("--sharding",), True),
        (("--sharding=false",), False),
        (("--sharding=true",), True),
    ],
)
def test_sharding_is_off_unless_asked(argv: tuple[str, ...], sharding: bool) -> None:
    assert options_from(parse(*argv)).sharding is sharding


def test_the_default_identity_is_unique_per_process_even_with_the_same_pid() -> None:
    # A restarted container has the same hostname and pid (often 1): its identity must
    # differ, or it would resume the Lease it held before the crash, cold.
    first, second = default_identity(), default_identity()
    assert first != second
    assert first.startswith(f"{socket.gethostname()}-{os.getpid()}-")
