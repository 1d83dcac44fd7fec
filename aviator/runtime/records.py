"""Records: immutable to the type checker, plain classes at run time.

A frozen dataclass sets each field through `object.__setattr__` when it is made: five
times the cost of a plain one's `__init__` (1.5 µs against 0.3 µs for fourteen
fields), and `dataclasses.replace` pays it again. The reconciler makes a handful of
these per reconcile, hundreds of reconciles a second (a settled one costs about 70 µs
in all, so they were a tenth of it). `@record` makes a dataclass the type checker
holds frozen (`dataclass_transform(frozen_default=True)`: assigning a field is an
error under mypy) while the class at run time is a plain one that compares and hashes
by its fields, as a frozen one does. Nothing may assign to a record's fields; make
another with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, dataclasses.Field))
def record(cls: type[T]) -> type[T]:
    """`cls` as a dataclass: frozen to the type checker, plain at run time (above)."""
    return dataclasses.dataclass(unsafe_hash=True)(cls)
