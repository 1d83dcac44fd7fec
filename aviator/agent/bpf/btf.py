"""Member offsets of kernel structs, read from the running kernel's BTF.

BCC compiles against whatever kernel headers are installed; when they come from a
different kernel version, `struct sock` fields beyond the first `sock_common` ones
sit at the wrong offsets. `/sys/kernel/btf/vmlinux` always describes the running
kernel, so the offsets the BPF program needs are taken from it and passed to the
compiler as `-D` defines.

Only the parts of the BTF format needed to walk struct/union members are decoded.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

VMLINUX_BTF = Path("/sys/kernel/btf/vmlinux")

_MAGIC = 0xEB9F
_KIND_INT = 1
_KIND_ARRAY = 3
_KIND_STRUCT = 4
_KIND_UNION = 5
_KIND_ENUM = 6
_KIND_TYPEDEF = 8
_KIND_VOLATILE = 9
_KIND_CONST = 10
_KIND_RESTRICT = 11
_KIND_FUNC = 12
_KIND_FUNC_PROTO = 13
_KIND_VAR = 14
_KIND_DATASEC = 15
_KIND_DECL_TAG = 17
_KIND_TYPE_TAG = 18
_KIND_ENUM64 = 19

# Bytes of kind-specific data following each 12-byte btf_type, per vlen entry or fixed.
_EXTRA_FIXED = {_KIND_INT: 4, _KIND_ARRAY: 12, _KIND_VAR: 4, _KIND_DECL_TAG: 4}
_EXTRA_PER_VLEN = {
    _KIND_STRUCT: 12,
    _KIND_UNION: 12,
    _KIND_ENUM: 8,
    _KIND_FUNC_PROTO: 8,
    _KIND_DATASEC: 12,
    _KIND_ENUM64: 12,
}
_MODIFIERS = {_KIND_TYPEDEF, _KIND_VOLATILE, _KIND_CONST, _KIND_RESTRICT, _KIND_TYPE_TAG}


class BtfError(RuntimeError):
    """The BTF blob is missing, malformed, or lacks a requested struct member."""


@dataclass(frozen=True)
class _Member:
    name: str
    type_id: int
    bit_offset: int


@dataclass(frozen=True)
class _Type:
    kind: int
    name: str
    size_or_type: int
    members: tuple[_Member, ...]


class Btf:
    """Decoded type table of one BTF blob (type id → kind, name, members)."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < 24:
            raise BtfError("BTF blob too short")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", blob, 0)
        if magic != _MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", blob, 8)
        types_start = hdr_len + type_off
        strings_start = hdr_len + str_off
        self._strings = blob[strings_start : strings_start + str_len]
        self._types: list[_Type | None] = [None]  # type id 0 is void
        self._by_name: dict[str, list[int]] = {}
        self._funcs: dict[str, int] = {}
        pos, end = types_start, types_start + type_len
        while pos < end:
            name_off, info, size_or_type = struct.unpack_from("<III", blob, pos)
            pos += 12
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            kflag = info >> 31
            members: tuple[_Member, ...] = ()
            if kind in (_KIND_STRUCT, _KIND_UNION):
                parsed = []
                for i in range(vlen):
                    m_name, m_type, m_off = struct.unpack_from("<III", blob, pos + 12 * i)
                    bit_offset = m_off & 0xFFFFFF if kflag else m_off
                    parsed.append(_Member(self._string(m_name), m_type, bit_offset))
                members = tuple(parsed)
            pos += _EXTRA_FIXED.get(kind, 0) + _EXTRA_PER_VLEN.get(kind, 0) * vlen
            name = self._string(name_off)
            self._types.append(_Type(kind, name, size_or_type, members))
            if name and kind in (_KIND_STRUCT, _KIND_UNION):
                self._by_name.setdefault(name, []).append(len(self._types) - 1)
            elif name and kind == _KIND_FUNC:
                self._funcs.setdefault(name, len(self._types) - 1)

    @classmethod
    def from_file(cls, path: Path = VMLINUX_BTF) -> Btf:
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise BtfError(f"cannot read {path}: {exc}") from exc

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        return self._strings[offset:end].decode("ascii", "replace")

    def _resolve(self, type_id: int) -> _Type | None:
        """Follow typedefs and qualifiers to the underlying type."""
        t = self._types[type_id]
        while t is not None and t.kind in _MODIFIERS:
            t = self._types[t.size_or_type]
        return t

    def func_id(self, name: str) -> int | None:
        """The type id of the kernel function `name` (a kfunc is called by it); None when
        this kernel has no such function."""
        return self._funcs.get(name)

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of `member` in `struct struct_name`, looking through anonymous
        unions and structs (as C does)."""
        for type_id in self._by_name.get(struct_name, []):
            t = self._types[type_id]
            if t is None or t.kind != _KIND_STRUCT or not t.members:
                continue
            found = self._find(t, member)
            if found is not None:
                if found % 8:
                    raise BtfError(f"{struct_name}.{member} is a bitfield")
                return found // 8
        raise BtfError(f"struct {struct_name} has no member {member}")

    def _find(self, t: _Type, member: str) -> int | None:
        for m in t.members:
            if m.name == member:
                return m.bit_offset
            if not m.name:
                inner = self._resolve(m.type_id)
                if inner is not None and inner.kind in (_KIND_STRUCT, _KIND_UNION):
                    found = self._find(inner, member)
                    if found is not None:
                        return m.bit_offset + found
        return None


# sock_common fields the program reads for sockets first seen on a send (older than the
# agent): their addresses are not in the send hook's arguments.
SOCK_COMMON_FIELDS = (
    "skc_daddr",
    "skc_rcv_saddr",
    "skc_dport",
    "skc_num",
    "skc_family",
    "skc_state",
    "skc_v6_daddr",
    "skc_v6_rcv_saddr",
)


def sock_offsets(btf: Btf) -> dict[str, int]:
    """Offsets of SOCK_COMMON_FIELDS within `struct sock` (sock_common is its first member)."""
    base = btf.member_offset("sock", "__sk_common")
    return {f: base + btf.member_offset("sock_common", f) for f in SOCK_COMMON_FIELDS}


def netns_offsets(btf: Btf) -> dict[str, int]:
    """Where a socket's network namespace inode is: `skc_net` (a possible_net_t, whose
    one member is the `struct net *`) within `struct sock`, and `ns.inum` within
    `struct net`. The agent names the namespace of a socket it hands off with it."""
    base = btf.member_offset("sock", "__sk_common")
    return {
        "skc_net": base + btf.member_offset("sock_common", "skc_net"),
        "net_ns_inum": btf.member_offset("net", "ns") + btf.member_offset("ns_common", "inum"),
    }


TCP_SOCK_FIELDS = ("rcv_nxt", "copied_seq", "write_seq")


def tcp_offsets(btf: Btf) -> dict[str, int]:
    """Where `struct tcp_sock` keeps the next sequence number expected (`rcv_nxt`), the
    first one the application has not read (`copied_seq`) and the end of what it has
    written (`write_seq`). The hand-off iterator checks for bytes received and not yet
    read (bpf/handoff.h); at the peer's FIN, the HTTP/2 parser checks it has seen the
    server's bytes before it (bpf/h2_streams.h)."""
    return {f"tcp_{f}": btf.member_offset("tcp_sock", f) for f in TCP_SOCK_FIELDS}


# sk_buff fields the raw tcp_probe hook reads to get the payload length.
SKB_FIELDS = ("len", "data")


def skb_offsets(btf: Btf) -> dict[str, int]:
    """Offsets of SKB_FIELDS in `struct sk_buff`, named skb_<field>."""
    return {f"skb_{f}": btf.member_offset("sk_buff", f) for f in SKB_FIELDS}


def has_skb_offsets(btf: Btf) -> bool:
    try:
        skb_offsets(btf)
    except BtfError:
        return False
    return True
