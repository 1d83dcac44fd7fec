"""JSON <-> model dataclasses, with defaults and validation driven by schema.py.

`decode` is defensive: it accepts exactly what the generated CRD accepts, fills in
defaults the way the API server's structural defaulting does (a JSON null counts as
absent), and reports every problem at once, each with its field path
("spec.selection.percentage: must be between 1 and 100, got 0").
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aviator.api.durations import Duration, DurationError
from aviator.api.schema import (
    JSON_TYPES,
    FieldInfo,
    Kind,
    class_rules,
    enum_values,
    fields_of,
    is_model,
    shape_of,
)


@dataclass(frozen=True)
class FieldError:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class PolicyError(ValueError):
    """An invalid object; `errors` lists every bad field."""

    def __init__(self, errors: Iterable[FieldError], subject: str = "") -> None:
        self.errors: tuple[FieldError, ...] = tuple(errors)
        self.subject = subject
        details = "; ".join(str(e) for e in self.errors)
        super().__init__(f"invalid {subject}: {details}" if subject else details)


class _Invalid:
    """Marker for a value that failed to decode (its error is already recorded)."""


_INVALID = _Invalid()


def _describe(value: Any) -> str:
    kind = JSON_TYPES.get(type(value))
    if kind is None:
        kind = (
            "list"
            if isinstance(value, list)
            else "object"
            if isinstance(value, Mapping)
            else type(value).__name__
        )
    shown = repr(value)
    return f"{kind} {shown[:40]}" if len(shown) <= 40 else f"{kind} {shown[:37]}..."


def _range_text(info: FieldInfo) -> str:
    low = None if info.minimum is None else f"{info.minimum:g}"
    high = None if info.maximum is None else f"{info.maximum:g}"
    if low is not None and high is not None:
        if info.exclusive_minimum or info.exclusive_maximum:
            left = "(" if info.exclusive_minimum else "["
            right = ")" if info.exclusive_maximum else "]"
            return f"must be in {left}{low}, {high}{right}"
        return f"must be between {low} and {high}"
    if low is not None:
        return (
            f"must be greater than {low}" if info.exclusive_minimum else f"must be at least {low}"
        )
    return f"must be less than {high}" if info.exclusive_maximum else f"must be at most {high}"


def _in_range(value: float, info: FieldInfo) -> bool:
    low, high = info.minimum, info.maximum
    if low is not None and (value < low or (info.exclusive_minimum and value == low)):
        return False
    return not (high is not None and (value > high or (info.exclusive_maximum and value == high)))


class _Decoder:
    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> _Invalid:
        self.errors.append(FieldError(path, message))
        return _INVALID

    def object(self, cls: type, data: Any, path: str) -> Any:
        if not isinstance(data, Mapping):
            return self.fail(path, f"must be an object, got {_describe(data)}")
        values: dict[str, Any] = {}
        ok = True
        for field in fields_of(cls):
            child = f"{path}.{field.info.json}"
            raw = data.get(field.info.json)
            if raw is None:
                if field.has_default:
                    values[field.name] = field.default_value()
                else:
                    self.fail(child, "is required")
                    ok = False
                continue
            value = self.value(field.type, raw, child, field.info)
            if value is _INVALID:
                ok = False
            else:
                values[field.name] = value
        if not ok:
            return _INVALID
        obj = cls(**values)
        for rule in class_rules(cls):
            if not rule.holds(obj):
                self.fail(path + (rule.field_path or ""), rule.message)
        return obj

    def value(self, tp: Any, raw: Any, path: str, info: FieldInfo) -> Any:
        decoded = self._typed(tp, raw, path, info)
        if decoded is _INVALID:
            return decoded
        for rule in info.rules:
            if not rule.holds(decoded):
                return self.fail(path, rule.message)
        return decoded

    def _typed(self, tp: Any, raw: Any, path: str, info: FieldInfo) -> Any:
        shape = shape_of(tp)
        tp = shape.type
        match shape.kind:
            case Kind.MODEL:
                return self.object(tp, raw, path)
            case Kind.LIST:
                if not isinstance(raw, list):
                    return self.fail(path, f"must be a list, got {_describe(raw)}")
                items = [
                    self._typed(shape.item, v, f"{path}[{i}]", FieldInfo("", ""))
                    for i, v in enumerate(raw)
                ]
                return _INVALID if any(v is _INVALID for v in items) else items
            case Kind.JSON_OBJECT:
                if not isinstance(raw, Mapping):
                    return self.fail(path, f"must be an object, got {_describe(raw)}")
                return dict(raw)
            case Kind.DURATION:
                try:
                    return Duration.parse(raw)
                except DurationError as exc:
                    return self.fail(path, str(exc))
            case Kind.ENUM:
                allowed = enum_values(tp)
                if not isinstance(raw, str) or raw not in allowed:
                    got = _describe(raw)
                    return self.fail(path, f"must be one of {', '.join(allowed)}; got {got}")
                return tp(raw)
        return self._scalar(tp, raw, path, info)

    def _scalar(self, tp: type, raw: Any, path: str, info: FieldInfo) -> Any:
        if tp is bool:
            if not isinstance(raw, bool):
                return self.fail(path, f"must be true or false, got {_describe(raw)}")
            return raw
        if tp is int:
            return self._number(raw, path, info, integer=True)
        if tp is float:
            return self._number(raw, path, info, integer=False)
        return self._string(raw, path, info)

    def _number(self, raw: Any, path: str, info: FieldInfo, *, integer: bool) -> Any:
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            kind = "an integer" if integer else "a number"
            return self.fail(path, f"must be {kind}, got {_describe(raw)}")
        if not math.isfinite(raw):
            return self.fail(path, f"must be a finite number, got {raw!r}")
        if integer:
            if isinstance(raw, float) and not raw.is_integer():
                return self.fail(path, f"must be an integer, got {raw!r}")
            raw = int(raw)
        else:
            raw = float(raw)
        if not _in_range(raw, info):
            return self.fail(path, f"{_range_text(info)}, got {raw:g}")
        return raw

    def _string(self, raw: Any, path: str, info: FieldInfo) -> Any:
        if not isinstance(raw, str):
            return self.fail(path, f"must be a string, got {_describe(raw)}")
        if info.min_length is not None and len(raw) < info.min_length:
            return self.fail(path, f"must be at least {info.min_length} characters long")
        if info.max_length is not None and len(raw) > info.max_length:
            return self.fail(path, f"must be at most {info.max_length} characters long")
        if info.pattern is not None and not re.fullmatch(info.pattern, raw):
            return self.fail(path, f"must match {info.pattern}, got {raw!r}")
        return raw


def decode(cls: type, data: Mapping[str, Any] | None, path: str) -> Any:
    """An instance of the model class `cls` from JSON, defaults applied.

    Raises PolicyError listing every invalid field (paths start with `path`).
    """
    decoder = _Decoder()
    if data is None:
        decoder.fail(path, "is required")
        raise PolicyError(decoder.errors)
    obj = decoder.object(cls, data, path)
    if decoder.errors or obj is _INVALID:
        raise PolicyError(decoder.errors)
    return obj


_SCALARS = frozenset({str, int, float, bool})


def to_json(value: Any) -> Any:
    """JSON form of a model value: camelCase keys, durations as text, None omitted."""
    if type(value) in _SCALARS:  # most values of a status (thousands of pod rows)
        return value
    if is_model(type(value)):
        out: dict[str, Any] = {}
        for field in fields_of(type(value)):
            v = getattr(value, field.name)
            if v is not None:
                out[field.info.json] = to_json(v)
        return out
    if isinstance(value, Duration):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    return value
