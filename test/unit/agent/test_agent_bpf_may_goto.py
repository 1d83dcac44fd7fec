"""Which kernels the program's may_goto loops (the HTTP/2 skim, the stream sweep) are
compiled for: the release `uname -r` gives, from Linux 6.9 on."""

from __future__ import annotations

import pytest

from aviator.agent.bpf.loader import kernel_has_may_goto


@pytest.mark.parametrize(
    ("release", "has"),
    [
        ("6.18.0-12-generic", True),
        ("6.9.0", True),
        ("6.9-rc1", True),
        ("6.10.3-arch1-1", True),
        ("7.0.1", True),
        ("6.8.12-cloud-amd64", False),
        ("6.1.0-18-amd64", False),
        ("5.15.0-105-generic", False),
        ("", False),
        ("unknown", False),
    ],
)
def test_may_goto_from_linux_6_9(release: str, has: bool) -> None:
    assert kernel_has_may_goto(release) is has
