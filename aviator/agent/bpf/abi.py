"""The latency program's kernel/user ABI, read from its one header (bpf/latency.h).

bpf/latency.h is the only place the histogram's shape, the map keys and values user
space touches, the counter indexes, the socket roles and the config slots are
written. The BPF program includes it; this module parses it, so the reader and the
loader derive every constant from it instead of mirroring it.

`parse()` is deliberately small and strict: it accepts the subset of C the header
keeps to (its opening comment lists it) and raises AbiError on anything else, rather
than guessing. Struct layouts are computed the way C lays them out on the BPF target
and on the 64-bit hosts the agent runs on: natural alignment, size rounded up to the
largest member alignment (the BPF tests compare them with BCC's types of the compiled
program, the unit tests with ctypes').

`LatencyAbi` checks everything user space relies on (field names, types and sizes;
counters numbered 0..N-1; known roles; the histogram shape of
aviator/latency/histogram.py) and exposes it in Python terms. `load()` reads a header;
`default()` the one beside the program's C source.
"""

from __future__ import annotations

import ctypes
import functools
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aviator.agent.bpf.model import Role
from aviator.latency import histogram
from aviator.latency.schema import APP_PROTOCOLS, AppProtocol

HEADER_NAME = "latency.h"

# Scalar types the header may use: size (= alignment) and the ctypes equivalent.
_SCALARS: dict[str, tuple[int, Any]] = {
    "u8": (1, ctypes.c_uint8),
    "u16": (2, ctypes.c_uint16),
    "u32": (4, ctypes.c_uint32),
    "u64": (8, ctypes.c_uint64),
    "s8": (1, ctypes.c_int8),
    "s16": (2, ctypes.c_int16),
    "s32": (4, ctypes.c_int32),
    "s64": (8, ctypes.c_int64),
}

# Integers are hex or decimal (no octal, no suffixes: C and Python read them alike).
_TOKEN = re.compile(
    r"\s*(?:(0[xX][0-9a-fA-F]+|0|[1-9][0-9]*)\b|([A-Za-z_]\w*)|(<<|[{}\[\]();,=+\-*]))"
)
_IDENT = re.compile(r"[A-Za-z_]\w*\Z")


class AbiError(ValueError):
    """The header is outside the parser's subset, or lacks what user space needs."""


@dataclass(frozen=True)
class Field:
    """One struct member: `type` is a scalar name or "struct <tag>"; `count` is the
    array length (None for a plain member); `size` covers the whole array."""

    name: str
    type: str
    offset: int
    size: int
    count: int | None


@dataclass(frozen=True)
class Struct:
    name: str
    size: int
    align: int
    fields: tuple[Field, ...]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise AbiError(f"struct {self.name} has no member {name}")

    @property
    def implicit_padding(self) -> int:
        """Bytes the compiler inserts (holes and tail padding) beyond the members."""
        return self.size - sum(f.size for f in self.fields)


@dataclass(frozen=True)
class Header:
    """Everything declared in the header. `constants` holds #define values and enum
    members alike (one C namespace); `enums` maps a tag to its members in order."""

    constants: Mapping[str, int]
    enums: Mapping[str, Mapping[str, int]]
    structs: Mapping[str, Struct]

    def const(self, name: str) -> int:
        try:
            return self.constants[name]
        except KeyError:
            raise AbiError(f"{HEADER_NAME} defines no {name}") from None

    def enum(self, tag: str) -> Mapping[str, int]:
        try:
            return self.enums[tag]
        except KeyError:
            raise AbiError(f"{HEADER_NAME} declares no enum {tag}") from None

    def struct(self, tag: str) -> Struct:
        try:
            return self.structs[tag]
        except KeyError:
            raise AbiError(f"{HEADER_NAME} declares no struct {tag}") from None

    def ctype(self, tag: str) -> type[ctypes.Structure]:
        """A ctypes structure with the layout of `struct tag` (for tests and tools)."""
        return _ctype(self, tag)


# --- parsing ------------------------------------------------------------------------


def _strip_comments(text: str) -> str:
    # Block comments keep their newlines so line numbers in errors stay right.
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def _tokens(text: str, line: int) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise AbiError(f"line {line}: unexpected {text[pos:].split()[0]!r}")
        out.append((m.group(m.lastindex or 0), line))
        pos = m.end()
    return out


class _Parser:
    def __init__(self) -> None:
        self.constants: dict[str, int] = {}
        self.enums: dict[str, dict[str, int]] = {}
        self.structs: dict[str, Struct] = {}
        self.toks: list[tuple[str, int]] = []
        self.pos = 0

    # Tokens of C declarations (directives are handled line by line in `parse`).
    def peek(self) -> str | None:
        return self.toks[self.pos][0] if self.pos < len(self.toks) else None

    def line(self) -> int:
        return self.toks[min(self.pos, len(self.toks) - 1)][1] if self.toks else 0

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None:
            raise AbiError(f"line {self.line()}: unexpected end of header")
        if expected is not None and tok != expected:
            raise AbiError(f"line {self.line()}: expected {expected!r}, found {tok!r}")
        self.pos += 1
        return tok

    def name(self) -> str:
        tok = self.take()
        if not _IDENT.match(tok):
            raise AbiError(f"line {self.line()}: expected a name, found {tok!r}")
        return tok

    def define(self, name: str, value: int) -> None:
        if name in self.constants:
            raise AbiError(f"line {self.line()}: {name} defined twice")
        self.constants[name] = value

    # expr := shift; shift := add ('<<' add)*; add := mul (('+'|'-') mul)*;
    # mul := unary ('*' unary)*; unary := '-' unary | INT | NAME | '(' expr ')'
    def expr(self) -> int:
        value = self.additive()
        while self.peek() == "<<":
            self.take()
            shift = self.additive()
            if shift < 0 or shift > 63:
                raise AbiError(f"line {self.line()}: shift by {shift}")
            value <<= shift
        return value

    def additive(self) -> int:
        value = self.term()
        while self.peek() in ("+", "-"):
            if self.take() == "+":
                value += self.term()
            else:
                value -= self.term()
        return value

    def term(self) -> int:
        value = self.unary()
        while self.peek() == "*":
            self.take()
            value *= self.unary()
        return value

    def unary(self) -> int:
        tok = self.take()
        if tok == "-":
            return -self.unary()
        if tok == "(":
            value = self.expr()
            self.take(")")
            return value
        if tok[0].isdigit():
            return int(tok, 0)
        if _IDENT.match(tok):
            if tok not in self.constants:
                raise AbiError(f"line {self.line()}: {tok} used before it is defined")
            return self.constants[tok]
        raise AbiError(f"line {self.line()}: unexpected {tok!r} in an expression")

    def expression(self, toks: list[tuple[str, int]]) -> int:
        """The value of a whole #define body."""
        saved = self.toks, self.pos
        self.toks, self.pos = toks, 0
        try:
            value = self.expr()
            if self.peek() is not None:
                raise AbiError(f"line {self.line()}: unexpected {self.peek()!r} after a value")
        finally:
            self.toks, self.pos = saved
        return value

    def declarations(self) -> None:
        """Every complete enum or struct declaration among the pending tokens."""
        while self.peek() is not None:
            self.declaration()

    def declaration(self) -> None:
        kind = self.take()
        if kind == "enum":
            self.enum()
        elif kind == "struct":
            self.struct()
        else:
            raise AbiError(f"line {self.line()}: expected enum or struct, found {kind!r}")
        self.take(";")

    def enum(self) -> None:
        tag = self.name()
        if tag in self.enums:
            raise AbiError(f"line {self.line()}: enum {tag} declared twice")
        self.take("{")
        members: dict[str, int] = {}
        value = 0
        while self.peek() != "}":
            member = self.name()
            if self.peek() == "=":
                self.take()
                value = self.expr()
            self.define(member, value)
            members[member] = value
            value += 1
            if self.peek() != "}":
                self.take(",")
        self.take("}")
        if not members:
            raise AbiError(f"line {self.line()}: enum {tag} is empty")
        self.enums[tag] = members

    def struct(self) -> None:
        tag = self.name()
        if tag in self.structs:
            raise AbiError(f"line {self.line()}: struct {tag} declared twice")
        self.take("{")
        fields: list[Field] = []
        offset = 0
        align = 1
        while self.peek() != "}":
            type_name = self.name()
            if type_name == "struct":
                inner = self.name()
                if inner not in self.structs:
                    raise AbiError(f"line {self.line()}: struct {inner} is not declared above")
                type_name = f"struct {inner}"
                elem_size, elem_align = self.structs[inner].size, self.structs[inner].align
            elif type_name in _SCALARS:
                elem_size = elem_align = _SCALARS[type_name][0]
            else:
                raise AbiError(f"line {self.line()}: unknown type {type_name!r}")
            member = self.name()
            count: int | None = None
            if self.peek() == "[":
                self.take()
                count = self.expr()
                self.take("]")
                if count < 1:
                    raise AbiError(f"line {self.line()}: {tag}.{member} has {count} elements")
            self.take(";")
            if any(f.name == member for f in fields):
                raise AbiError(f"line {self.line()}: struct {tag} has two members {member}")
            offset = -(-offset // elem_align) * elem_align
            size = elem_size * (count or 1)
            fields.append(Field(member, type_name, offset, size, count))
            offset += size
            align = max(align, elem_align)
        self.take("}")
        if not fields:
            raise AbiError(f"line {self.line()}: struct {tag} is empty")
        size = -(-offset // align) * align
        self.structs[tag] = Struct(tag, size, align, tuple(fields))


def parse(text: str) -> Header:
    """Parse the header's text (the subset listed in its opening comment)."""
    p = _Parser()
    guard: str | None = None
    state = "before"  # -> "inside" the include guard -> "after" its #endif
    for number, raw in enumerate(_strip_comments(text).splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if state != "inside" and not (state == "before" and line.startswith("#ifndef")):
            raise AbiError(f"line {number}: {line!r} outside the include guard")
        if not line.startswith("#"):
            p.toks.extend(_tokens(line, number))
            continue
        p.declarations()  # the ones before a directive are complete
        directive, _, rest = line[1:].strip().partition(" ")
        rest = rest.strip()
        if state == "before":
            if directive != "ifndef" or not _IDENT.match(rest):
                raise AbiError(f"line {number}: bad include guard {line!r}")
            guard, state = rest, "inside"
        elif directive == "endif" and not rest:
            state = "after"
        elif directive == "define":
            m = re.match(r"([A-Za-z_]\w*)(?:\s+(.*))?\Z", rest)
            if m is None:
                raise AbiError(f"line {number}: unsupported #define {rest!r}")
            name, value = m.group(1), (m.group(2) or "").strip()
            if name == guard and not value:
                continue
            if not value:
                raise AbiError(f"line {number}: #define {name} has no value")
            p.define(name, p.expression(_tokens(value, number)))
        else:
            raise AbiError(f"line {number}: unsupported directive {line!r}")
    p.declarations()
    if state != "after":
        raise AbiError("the header is not wrapped in an #ifndef/#define/#endif guard")
    return Header(p.constants, p.enums, p.structs)


def _ctype(header: Header, tag: str) -> type[ctypes.Structure]:
    s = header.struct(tag)
    members: list[tuple[str, Any]] = []
    for f in s.fields:
        base: Any
        if f.type.startswith("struct "):
            base = _ctype(header, f.type.removeprefix("struct "))
        else:
            base = _SCALARS[f.type][1]
        members.append((f.name, base * f.count if f.count is not None else base))
    return type(tag, (ctypes.Structure,), {"_fields_": members})


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
}
# Map keys are compared byte for byte by the kernel: no hidden padding allowed.
_KEYS = ("ep_key", "listen_key")

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
    "listeners": ("listen_key", None),
    "sockets": ("u64", "sock_state"),
    "h2conns": ("u64", "h2_conn"),
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

    for name, (key, value) in _MAP_TYPES.items():
        table = bpf[name.encode()]
        if key in _SCALARS:
            if ctypes.sizeof(table.Key) != _SCALARS[key][0]:
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
