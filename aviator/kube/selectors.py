"""Kubernetes label selectors in their string form (what `labelSelector=` carries and
what `metav1.LabelSelector` becomes on the wire: `LabelSelectorAsSelector(...).String()`),
parsed and matched. Pure; the input is network input, so anything that is not a
selector raises `SelectorError`, never anything else.

The grammar is apimachinery's `labels.Parse`, less the numeric `<`/`>` operators (no
LabelSelector produces them; they are refused):

    selector    := "" | requirement ("," requirement)*
    requirement := KEY | "!" KEY
                 | KEY ("=" | "==" | "!=") VALUE
                 | KEY ("in" | "notin") "(" VALUE ("," VALUE)* ")"   (a VALUE may be empty)

KEY is a qualified name (an optional DNS-subdomain prefix and "/", then a name of at
most 63 characters), VALUE a label value (at most 63, possibly empty after `=`).
Matching follows Kubernetes: every requirement must hold; `!=` and `notin` hold for
a missing key, `=` and `in` need the key. `render` writes the canonical form back
(what `parse` reads to the same selector).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

MAX_LENGTH = 4096  # characters of one selector
MAX_REQUIREMENTS = 64

_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A token: an identifier (keys and values), an operator, or punctuation.
_TOKEN = re.compile(r"\s*(?:(==|!=|=|!|\(|\)|,)|([^\s=!(),<>]+)|(\S))")


class SelectorError(ValueError):
    """The text is not a label selector this parser accepts."""


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: Operator
    values: tuple[str, ...] = ()  # sorted, distinct; one for = and !=

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values  # != and notin

    def render(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True, slots=True)
class Selector:
    """Requirements sorted by key, then operator (Kubernetes' canonical order)."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def render(self) -> str:
        return ",".join(r.render() for r in self.requirements)

    def equals(self, key: str) -> str | None:
        """The one value `key` must equal, when the selector pins it (`key=v` or
        `key in (v)`), else None."""
        for r in self.requirements:
            if r.key == key and r.op in ("=", "in") and len(r.values) == 1:
                return r.values[0]
        return None


def valid_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_NAME.match(name))


def valid_value(value: str) -> bool:
    return len(value) <= 63 and bool(_NAME.match(value))


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:  # only trailing whitespace is left
            break
        if m.group(3) is not None:
            raise SelectorError(f"unexpected {m.group(3)!r} at {m.start(3)}")
        out.append(m.group(1) or m.group(2))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise SelectorError("selector ends too early")
        self.pos += 1
        return token

    def key(self) -> str:
        token = self.take()
        if not valid_key(token):
            raise SelectorError(f"invalid label key {token!r}")
        return token

    def value(self) -> str:
        token = self.peek()
        if token in (None, ",", ")"):
            return ""  # `key=` asks for the empty value
        self.pos += 1
        assert token is not None
        if not valid_value(token):
            raise SelectorError(f"invalid label value {token!r}")
        return token

    def requirement(self) -> Requirement:
        if self.peek() == "!":
            self.take()
            return Requirement(self.key(), "!")
        key = self.key()
        op = self.peek()
        if op in (None, ","):
            return Requirement(key, "exists")
        self.take()
        if op in ("=", "==", "!="):
            return Requirement(key, "!=" if op == "!=" else "=", (self.value(),))
        if op in ("in", "notin"):
            if self.take() != "(":
                raise SelectorError(f"expected '(' after {op}")
            values = {self.value()}  # "()" is the empty value, as apimachinery reads it
            while self.peek() == ",":
                self.take()
                values.add(self.value())
            if self.take() != ")":
                raise SelectorError("expected ')'")
            return Requirement(key, "in" if op == "in" else "notin", tuple(sorted(values)))
        raise SelectorError(f"unexpected {op!r} after {key!r}")


def parse_selector(text: str) -> Selector:
    """The selector `text` says; `SelectorError` if it says none."""
    if len(text) > MAX_LENGTH:
        raise SelectorError(f"selector longer than {MAX_LENGTH} characters")
    tokens = _tokens(text)
    if not tokens:
        return Selector()
    parser = _Parser(tokens)
    requirements = [parser.requirement()]
    while parser.peek() is not None:
        if parser.take() != ",":
            raise SelectorError(f"expected ',' before {parser.tokens[parser.pos - 1]!r}")
        requirements.append(parser.requirement())
        if len(requirements) > MAX_REQUIREMENTS:
            raise SelectorError(f"more than {MAX_REQUIREMENTS} requirements")
    order = {"exists": 0, "!": 1, "=": 2, "!=": 3, "in": 4, "notin": 5}
    return Selector(tuple(sorted(set(requirements), key=lambda r: (r.key, order[r.op], r.values))))
