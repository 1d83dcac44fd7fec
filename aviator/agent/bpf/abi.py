"""The latency program's kernel/user ABI, read from its one header (bpf/latency.h).

bpf/latency.h is the only place the histogram's shape, the map keys and values user
space touches, the counter indexes, the socket roles and the config slots are
written. The BPF program includes it; this module parses it, so the reader and the
loader derive every constant from it instead of mirroring it.

The parser (`parse()`, strict, the subset of C the header keeps to) is
`aviator.agent.bpf.cheader`; this module says what user space relies on.

`LatencyAbi` checks everything user space relies on (field names, types and sizes;
counters numbered 0..N-1; known roles; the histogram shape of
aviator/latency/histogram.py) and exposes it in Python terms. `load()` reads a header;
`default()` the one beside the program's C source.
"""

from __future__ import annotations

import ctypes
import functools
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aviator.agent.bpf.cheader import HEADER_NAME as HEADER_NAME  # its file name
from aviator.agent.bpf.cheader import SCALARS, Header, Struct
from aviator.agent.bpf.cheader import AbiError as AbiError  # raised by everything here
from aviator.agent.bpf.cheader import parse as parse  # the header → Header
from aviator.latency import histogram
from aviator.latency.schema import APP_PROTOCOLS, AppProtocol, Role

# --- what user space relies on ------------------------------------------------------

# Members the reader and the loader read or write: (type, array length or None), or
# for `buckets` the histogram's length, checked separately.
_NEEDED_MEMBERS: dict[str, dict[str, tuple[str, int | None]]] = {
    "ep_key": {"addr": ("u8", 16), "port": ("u16", None), "role": ("u8", None)},
    "ep_val": {
        "count": ("u64", None),
        "sum_us": ("u64", None),
        "max_us": ("u64", None),
        "rif": ("s64", None),
        "aborted": ("u64", None),
        "statuses": ("u64", None),
        "errors": ("u64", None),
    },
    "listen_key": {"addr": ("u8", 16), "port": ("u16", None)},
    "sock_state": {
        "start_ns": ("u64", None),
        "idle_ns": ("u64", None),
        "ep": ("struct ep_key", None),
        "other": ("u8", 16),
        "other_port": ("u16", None),
        "netns": ("u32", None),
        "requests": ("u32", None),
        "streams": ("s64", None),
        "proto": ("u8", None),
    },
    "h2_slot": {"sid": ("u64", None), "start_ns": ("u64", None)},
    "h2_conn": {"server_cut": ("u32", None)},
}
# Map keys are compared byte for byte by the kernel: no hidden padding allowed.
_KEYS = ("ep_key", "listen_key", "probe_key", "addr_key")

_COUNTER_PREFIX = "CNT_"
_ROLE_PREFIX = "ROLE_"
_APP_PREFIX = "APP_"
# enum app_proto members that name no protocol of the schema (nothing seen yet).
_APP_UNNAMED = ("APP_UNKNOWN",)


@dataclass(frozen=True)
class LatencyAbi:
    """The ABI in the terms user space uses, checked on construction.

    `counter_names[i]` names the per-CPU counter i; `roles` maps ep_key.role values to
    Role; `config_adopting` is the config slot that lets the program adopt sockets;
    `app_protocols` maps enum app_proto values (sock_state.proto, the index of
    ep_val.proto_requests) to the schema's protocols, APP_UNKNOWN left out.
    """

    header: Header
    counter_names: tuple[str, ...]
    roles: Mapping[int, Role]
    config_adopting: int
    num_buckets: int
    hist_sub_bits: int
    hist_max_exp: int
    app_protocols: Mapping[int, AppProtocol]

    @property
    def endpoint_key(self) -> Struct:
        return self.header.struct("ep_key")

    @property
    def endpoint_value(self) -> Struct:
        return self.header.struct("ep_val")

    @property
    def listener_key(self) -> Struct:
        return self.header.struct("listen_key")

    @property
    def socket_value(self) -> Struct:
        return self.header.struct("sock_state")

    @classmethod
    def from_header(cls, header: Header) -> LatencyAbi:
        for tag, needed in _NEEDED_MEMBERS.items():
            s = header.struct(tag)
            for member, (type_name, count) in needed.items():
                f = s.field(member)
                if (f.type, f.count) != (type_name, count):
                    want = type_name + (f"[{count}]" if count else "")
                    got = f.type + (f"[{f.count}]" if f.count else "")
                    raise AbiError(f"{tag}.{member} is {got}, user space reads {want}")
        for tag in _KEYS:
            if header.struct(tag).implicit_padding:
                raise AbiError(f"struct {tag} has implicit padding: make it explicit")

        sub_bits = header.const("HIST_SUB_BITS")
        max_exp = header.const("HIST_MAX_EXP")
        num_buckets = header.const("NUM_BUCKETS")
        if header.const("HIST_SUB_BUCKETS") != 1 << sub_bits:
            raise AbiError("HIST_SUB_BUCKETS is not 1 << HIST_SUB_BITS")
        if num_buckets != (max_exp - sub_bits + 2) << sub_bits:
            raise AbiError(f"NUM_BUCKETS {num_buckets} does not end at HIST_MAX_EXP {max_exp}")
        buckets = header.struct("ep_val").field("buckets")
        if (buckets.type, buckets.count) != ("u64", num_buckets):
            raise AbiError("ep_val.buckets is not u64[NUM_BUCKETS]")
        ours = (histogram.SUB_BITS, histogram.MAX_EXP, histogram.NUM_BUCKETS)
        if (sub_bits, max_exp, num_buckets) != ours:
            raise AbiError(
                f"histogram shape (sub-bits, max exponent, buckets) is "
                f"{(sub_bits, max_exp, num_buckets)} in {HEADER_NAME} but {ours} in "
                "aviator/latency/histogram.py"
            )

        counters = header.enum("counter")
        *named, last = counters.items()
        if last != ("NUM_COUNTERS", len(named)):
            raise AbiError("enum counter must end with NUM_COUNTERS, the number of counters")
        names: list[str] = []
        for i, (member, value) in enumerate(named):
            if value != i or not member.startswith(_COUNTER_PREFIX):
                raise AbiError(f"counter {member} = {value}: want {_COUNTER_PREFIX}* = {i}")
            names.append(member.removeprefix(_COUNTER_PREFIX).lower())

        known: tuple[Role, ...] = typing.get_args(Role)
        by_name: dict[str, Role] = {r: r for r in known}
        roles: dict[int, Role] = {}
        for member, value in header.enum("ep_role").items():
            role = by_name.get(member.removeprefix(_ROLE_PREFIX).lower())
            if not member.startswith(_ROLE_PREFIX) or role is None:
                raise AbiError(f"role {member}: want {_ROLE_PREFIX}<one of {known}>")
            if value in roles or not 0 < value < 256:
                raise AbiError(f"role {member} = {value}: not a distinct nonzero u8")
            roles[value] = role
        if sorted(roles.values()) != sorted(known):
            raise AbiError(f"enum ep_role must name each of {known}")

        config = header.enum("config_slot")
        slot = header.const("CONFIG_ADOPTING")
        if header.const("NUM_CONFIG") != len(config) - 1 or not 0 <= slot < len(config) - 1:
            raise AbiError("enum config_slot must end with NUM_CONFIG, the number of slots")

        apps: dict[int, AppProtocol] = {}
        by_app: dict[str, AppProtocol] = {p: p for p in APP_PROTOCOLS}
        *app_members, app_last = header.enum("app_proto").items()
        if app_last != ("NUM_APP", len(app_members)):
            raise AbiError("enum app_proto must end with NUM_APP, the number of protocols")
        for member, value in app_members:
            if member in _APP_UNNAMED:
                continue
            proto = by_app.get(member.removeprefix(_APP_PREFIX).lower())
            if not member.startswith(_APP_PREFIX) or proto is None:
                raise AbiError(f"protocol {member}: want {_APP_PREFIX}<one of {APP_PROTOCOLS}>")
            apps[value] = proto
        if sorted(apps.values()) != sorted(APP_PROTOCOLS):
            raise AbiError(f"enum app_proto must name each of {APP_PROTOCOLS}")
        requests = header.struct("ep_val").field("proto_requests")
        if (requests.type, requests.count) != ("u64", len(app_members)):
            raise AbiError("ep_val.proto_requests is not u64[NUM_APP]")

        return cls(
            header=header,
            app_protocols=apps,
            counter_names=tuple(names),
            roles=roles,
            config_adopting=slot,
            num_buckets=num_buckets,
            hist_sub_bits=sub_bits,
            hist_max_exp=max_exp,
        )


def load(path: Path) -> LatencyAbi:
    """Parse and check a header file; AbiError (with the path) when it is unusable."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AbiError(f"cannot read {path}: {exc}") from exc
    try:
        return LatencyAbi.from_header(parse(text))
    except AbiError as exc:
        raise AbiError(f"{path}: {exc}") from exc


@functools.cache
def default() -> LatencyAbi:
    """The ABI of the header beside the program's C source (located by the loader)."""
    from aviator.agent.bpf.loader import SOURCE  # late: the loader imports this module

    return load(SOURCE.parent / HEADER_NAME)


# Maps user space reads or writes: name → (key struct or scalar, value struct or None).
_MAP_TYPES: dict[str, tuple[str, str | None]] = {
    "endpoints": ("ep_key", "ep_val"),
    "ep_dirty": ("ep_key", None),
    "listeners": ("listen_key", None),
    "sockets": ("u64", "sock_state"),
    "h2conns": ("u64", "h2_conn"),
    "probe_ports": ("probe_key", "probe_paths"),
    "node_addrs": ("addr_key", None),
    "agent_conns": ("probe_key", None),
}
# Maps compiled in only where the kernel's BTF allows (bpf/handoff.h): checked if there.
_OPTIONAL_MAP_TYPES: dict[str, tuple[str, str | None]] = {
    "handoff_orders": ("u64", "handoff_order"),
}


def check_program(abi: LatencyAbi, bpf: Any) -> None:
    """Check a compiled program's maps (a bcc.BPF) against the ABI: the sizes and member
    offsets of their key and value types, which BCC takes from the compiler, and the
    lengths of the arrays indexed by the ABI's enums. Raises AbiError."""

    def same_layout(what: str, ctype: Any, s: Struct) -> None:
        if ctypes.sizeof(ctype) != s.size:
            raise AbiError(f"{what} is {ctypes.sizeof(ctype)} bytes, struct {s.name} {s.size}")
        for f in s.fields:
            member = getattr(ctype, f.name, None)
            if member is None or member.offset != f.offset:
                got = "absent" if member is None else f"at {member.offset}"
                raise AbiError(f"{what} member {f.name} is {got}, want {f.offset}")

    maps = dict(_MAP_TYPES)
    for name, types in _OPTIONAL_MAP_TYPES.items():
        try:
            bpf[name.encode()]
        except KeyError:
            continue
        maps[name] = types
    for name, (key, value) in maps.items():
        table = bpf[name.encode()]
        if key in SCALARS:
            if ctypes.sizeof(table.Key) != SCALARS[key][0]:
                raise AbiError(f"map {name} key is {ctypes.sizeof(table.Key)} bytes, {key}")
        else:
            same_layout(f"map {name} key", table.Key, abi.header.struct(key))
        if value is not None:
            same_layout(f"map {name} value", table.Leaf, abi.header.struct(value))
    for name, want in (
        ("counters", len(abi.counter_names)),
        ("config", abi.header.const("NUM_CONFIG")),
    ):
        entries = int(bpf[name.encode()].max_entries)
        if entries != want:
            raise AbiError(f"map {name} has {entries} entries, the header says {want}")
