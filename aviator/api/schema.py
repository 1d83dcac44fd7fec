"""Schema facts attached to the model's dataclass fields: the single source of truth.

Every field of the API dataclasses is declared with `api_field(...)`, which records
its JSON name, description, bounds and validation rules. The CRD generator (crd.py),
the defensive decoder (codec.py) and the reference table (docs.py) all read these
facts, so the API server, the controller and the documentation cannot disagree. What
kind of value a field's type is (`shape_of`) is decided here too, once for all three.

A `Rule` carries the same check twice: as a CEL expression for the API server and as
a Python predicate for the decoder. Tests run both against the same bad specs.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aviator.api.durations import Duration


@dataclass(frozen=True)
class Rule:
    """One validation rule.

    `cel` is evaluated by the API server with `self` bound to the field's value (or to
    the object, for rules declared on a class); `holds` is its Python twin, called with
    the decoded value (a `Duration`, a `str`, a dataclass instance...). `field_path`
    (".a.b", relative to the object) names the field a class-level rule is about.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool]
    field_path: str | None = None


@dataclass(frozen=True)
class FieldInfo:
    """What the schema says about one field."""

    json: str
    description: str
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    format: str | None = None
    rules: tuple[Rule, ...] = ()
    item_description: str | None = None  # for lists of scalars
    list_type: str | None = None  # atomic | set | map
    list_map_keys: tuple[str, ...] = ()
    preserve_unknown_fields: bool = False


_META_KEY = "aviator.api"


def api_field(
    json: str,
    description: str,
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | None = None,
    **facts: Any,
) -> Any:
    """A dataclass field carrying its schema facts (see FieldInfo for `facts`)."""
    info = FieldInfo(json=json, description=" ".join(description.split()), **facts)
    meta = {_META_KEY: info}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class Field:
    """A model field as the generators see it: Python name, resolved type, facts."""

    name: str
    type: Any
    info: FieldInfo
    default: Any  # dataclasses.MISSING when required
    default_factory: Any  # dataclasses.MISSING unless a factory is declared

    @property
    def has_default(self) -> bool:
        return self.default is not dataclasses.MISSING or (
            self.default_factory is not dataclasses.MISSING
        )

    def default_value(self) -> Any:
        if self.default_factory is not dataclasses.MISSING:
            return self.default_factory()
        return self.default

    @property
    def shape(self) -> Shape:
        return shape_of(self.type)


def fields_of(cls: type) -> tuple[Field, ...]:
    """The model fields of a dataclass, in declaration order, types resolved.

    Cached: resolving type hints is slow, and the decoder runs on every reconcile.
    """
    return _fields_of(cls)


@functools.cache
def _fields_of(cls: type) -> tuple[Field, ...]:
    hints = typing.get_type_hints(cls)
    out: list[Field] = []
    for f in dataclasses.fields(cls):
        info = f.metadata.get(_META_KEY)
        if info is None:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with api_field()")
        out.append(Field(f.name, hints[f.name], info, f.default, f.default_factory))
    return tuple(out)


def class_rules(cls: type) -> tuple[Rule, ...]:
    """Rules declared on a class as `RULES: ClassVar[tuple[Rule, ...]]`."""
    rules: tuple[Rule, ...] = getattr(cls, "RULES", ())
    return rules


def class_description(cls: type) -> str:
    """The first paragraph of the class docstring, on one line."""
    doc = (cls.__doc__ or "").strip().split("\n\n")[0]
    return " ".join(doc.split())


# The model's types. The model only uses: bool, int, float, str, Duration, str-valued
# Enums, model dataclasses, `X | None`, `list[X]` and `dict[str, Any]` (an opaque JSON
# object); every generator dispatches on the `Kind` that `shape_of` finds.


class Kind(enum.Enum):
    """What kind of value a model type holds."""

    MODEL = "model"  # a model dataclass (its fields declared with api_field)
    LIST = "list"  # list[X]
    JSON_OBJECT = "JSON object"  # dict[str, Any]: opaque, kept as it is
    DURATION = "duration"
    ENUM = "enum"  # a str-valued Enum
    SCALAR = "scalar"  # bool, int, float or str


# JSON's name for each scalar type (the CRD's types, the decoder's messages).
JSON_TYPES: dict[type, str] = {bool: "boolean", int: "integer", float: "number", str: "string"}


@dataclass(frozen=True)
class Shape:
    """A model type as the generators see it."""

    kind: Kind
    type: Any  # the type itself, X for `X | None`
    item: Any = None  # for a LIST: the type of its items


@functools.cache
def shape_of(tp: Any) -> Shape:
    """The shape of a model type (`X | None` is X); TypeError for a type outside the model.

    Cached: the decoder asks on every value it decodes.
    """
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported union {tp!r}")
        tp = args[0]
    origin = typing.get_origin(tp)
    if origin is list:
        return Shape(Kind.LIST, tp, typing.get_args(tp)[0])
    if origin is dict:
        return Shape(Kind.JSON_OBJECT, tp)
    if tp is Duration:
        return Shape(Kind.DURATION, tp)
    if is_model(tp):
        return Shape(Kind.MODEL, tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Shape(Kind.ENUM, tp)
    if tp in JSON_TYPES:
        return Shape(Kind.SCALAR, tp)
    raise TypeError(f"unsupported model type {tp!r}")


@functools.cache
def enum_values(tp: type[enum.Enum]) -> tuple[str, ...]:
    return tuple(str(m.value) for m in tp)


def is_model(tp: Any) -> bool:
    """A model class (a dataclass of api_fields), not a value type like Duration."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp) and tp is not Duration
