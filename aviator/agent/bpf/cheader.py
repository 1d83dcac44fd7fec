"""A strict parser of the small subset of C that bpf/latency.h keeps to.

`parse()` accepts exactly what the header's opening comment lists (#define of integer
expressions, enums, structs of fixed-size scalars, arrays and earlier structs) and raises
AbiError on anything else, rather than guessing. Struct layouts are computed the way C
lays them out on the BPF target and on the 64-bit hosts the agent runs on: natural
alignment, size rounded up to the largest member alignment (the BPF tests compare them
with BCC's types of the compiled program, the unit tests with ctypes'). `ctype_of()`
gives a struct's ctypes equivalent. What user space relies on in the parsed header is
checked in `aviator.agent.bpf.abi`.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HEADER_NAME = "latency.h"  # the one header this parses, beside the program's C source

# Scalar types the header may use: size (= alignment) and the ctypes equivalent.
SCALARS: dict[str, tuple[int, Any]] = {
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
        return ctype_of(self, tag)


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
            elif type_name in SCALARS:
                elem_size = elem_align = SCALARS[type_name][0]
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


def ctype_of(header: Header, tag: str) -> type[ctypes.Structure]:
    s = header.struct(tag)
    members: list[tuple[str, Any]] = []
    for f in s.fields:
        base: Any
        if f.type.startswith("struct "):
            base = ctype_of(header, f.type.removeprefix("struct "))
        else:
            base = SCALARS[f.type][1]
        members.append((f.name, base * f.count if f.count is not None else base))
    return type(tag, (ctypes.Structure,), {"_fields_": members})
