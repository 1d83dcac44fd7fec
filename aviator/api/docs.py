"""Markdown reference tables for docs/api.md, generated from the model like the CRD.

docs/api.md is hand-written prose with generated blocks between marker comments:

    <!-- BEGIN GENERATED spec -->  ...  <!-- END GENERATED spec -->

`update_reference` rewrites every such block; a unit test checks the file is current.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from aviator.api import types as api
from aviator.api.codec import to_json
from aviator.api.schema import Field, Kind, class_rules, enum_values, fields_of, is_model, shape_of
from aviator.api.status import AviatorPolicyStatus


def _type_name(tp: Any) -> str:
    shape = shape_of(tp)
    match shape.kind:
        case Kind.LIST:
            return f"list of {_type_name(shape.item)}"
        case Kind.MODEL:
            return "object"
        case Kind.JSON_OBJECT:
            return "object (opaque)"
        case Kind.DURATION:
            return "duration"
        case Kind.ENUM:
            return " / ".join(f"`{v}`" for v in enum_values(shape.type))
        case Kind.SCALAR:
            return {bool: "bool", int: "int", float: "number", str: "string"}[shape.type]


def _bounds(field: Field) -> str:
    info = field.info
    # A duration is never negative; its rules, if any, say more.
    unsigned = field.shape.kind is Kind.DURATION and not info.rules
    parts: list[str] = ["≥ 0"] if unsigned else []
    low, high = info.minimum, info.maximum
    if low is not None and high is not None:
        left = "(" if info.exclusive_minimum else "["
        right = ")" if info.exclusive_maximum else "]"
        parts.append(f"{left}{low:g}, {high:g}{right}")
    elif low is not None:
        parts.append(f"{'>' if info.exclusive_minimum else '≥'} {low:g}")
    elif high is not None:
        parts.append(f"{'<' if info.exclusive_maximum else '≤'} {high:g}")
    if info.max_length is not None:
        parts.append(f"≤ {info.max_length} chars")
    parts.extend(r.message for r in info.rules)
    return "; ".join(parts)


def _default(field: Field) -> str:
    if field.info.required:
        return "required"
    if not field.has_default:
        return ""
    value = field.default_value()
    if value is None or isinstance(value, list | dict) or is_model(type(value)):
        return ""
    shown = to_json(value)
    if isinstance(shown, bool):
        shown = str(shown).lower()
    return f"`{shown}`"


def _leaves(cls: type, prefix: str) -> Iterator[tuple[str, Field]]:
    for field in fields_of(cls):
        path = f"{prefix}{field.info.json}"
        shape = field.shape
        if shape.kind is Kind.MODEL:
            yield from _leaves(shape.type, path + ".")
        elif shape.kind is Kind.LIST and is_model(shape.item):
            yield path, field
            yield from _leaves(shape.item, path + "[].")
        else:
            yield path, field


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def spec_table() -> str:
    lines = [
        "| Field | Type | Default | Bounds and rules | Description |",
        "|---|---|---|---|---|",
    ]
    for path, f in _leaves(api.AviatorPolicySpec, ""):
        cells = [f"`{path}`", _type_name(f.type), _default(f), _bounds(f), f.info.description]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    lines.append("Rules across fields:")
    lines.append("")
    for cls in (api.AviatorPolicySpec, api.RoutingSpec):
        lines.extend(f"- {r.message}." for r in class_rules(cls))
    return "\n".join(lines)


def status_table() -> str:
    lines = ["| Field | Type | Description |", "|---|---|---|"]
    for path, f in _leaves(AviatorPolicyStatus, ""):
        cells = [f"`{path}`", _type_name(f.type), f.info.description]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


BLOCKS: dict[str, Callable[[], str]] = {"spec": spec_table, "status": status_table}


def update_reference(markdown: str) -> str:
    """`markdown` with every generated block rewritten; ValueError if a block is missing."""
    for name, render in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- BEGIN GENERATED {name} -->\n).*?(<!-- END GENERATED {name} -->)", re.S
        )
        match = pattern.search(markdown)
        if match is None:
            raise ValueError(f"no generated block {name!r} (<!-- BEGIN GENERATED {name} -->)")
        markdown = markdown[: match.end(1)] + render() + "\n" + markdown[match.start(2) :]
    return markdown
