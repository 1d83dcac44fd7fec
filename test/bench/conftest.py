"""The benchmark smoke tests share one box and one control plane (bench/common.py);
they are stopped when a module's tests are done, so that they do not run, eBPF
programs attached, through the rest of `make test`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bench import common


@pytest.fixture(scope="module", autouse=True)
def _shared_box_stops_with_the_module() -> Iterator[None]:
    yield
    common.stop_shared()
