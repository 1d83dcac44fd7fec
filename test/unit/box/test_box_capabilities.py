"""The real node's runc drops the capabilities the machine's bounding set lacks, and
only those, from a container's OCI config."""

from __future__ import annotations

from pathlib import Path

from aviator.box.capabilities import NAMES, bounding_set, bundle_of, strip

ALL = (1 << len(NAMES)) - 1
NO_SYS_RESOURCE = ALL & ~(1 << NAMES.index("SYS_RESOURCE"))


def test_capability_numbers_follow_the_kernel() -> None:
    assert NAMES.index("SYS_ADMIN") == 21
    assert NAMES.index("SYS_RESOURCE") == 24
    assert NAMES.index("PERFMON") == 38
    assert NAMES.index("BPF") == 39


def test_bounding_set_from_proc_status() -> None:
    assert bounding_set("Name:\tx\nCapBnd:\t000001fffeffffff\n") == 0x1FFFEFFFFFF


def test_strip_drops_what_the_machine_cannot_grant() -> None:
    asked = ["CAP_BPF", "CAP_SYS_RESOURCE", "CAP_NET_ADMIN", "CAP_SOMETHING_NEW"]
    config = {"process": {"capabilities": {s: list(asked) for s in ("bounding", "effective")}}}
    assert strip(config, NO_SYS_RESOURCE) == ["CAP_SYS_RESOURCE"]
    kept = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SOMETHING_NEW"]  # unknown names: runc judges
    assert config["process"]["capabilities"] == {"bounding": kept, "effective": kept}
    assert strip(config, ALL) == []
    assert strip({"process": {}}, NO_SYS_RESOURCE) == []


def test_only_create_and_run_have_a_bundle() -> None:
    assert bundle_of(["--root", "/r", "create", "--bundle", "/b", "id"]) == Path("/b")
    assert bundle_of(["run", "--bundle=/b", "id"]) == Path("/b")
    assert bundle_of(["--root", "/r", "state", "id"]) is None
