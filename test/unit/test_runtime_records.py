"""Records: frozen to the type checker, plain dataclasses at run time."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

from mypy import api as mypy_api

from aviator.runtime.records import record


@record
class Point:
    x: int
    y: int = 0
    note: str = dataclasses.field(default="", compare=False)


def test_a_record_compares_and_hashes_by_its_fields_as_a_frozen_dataclass_does() -> None:
    assert Point(1, 2) == Point(1, 2, note="other")
    assert Point(1, 2) != Point(2, 1)
    assert hash(Point(1, 2)) == hash(Point(1, 2, note="other"))
    assert {Point(1, 2): "a"}[Point(1, 2)] == "a"
    moved = dataclasses.replace(Point(1, 2), y=3)
    assert moved == Point(1, 3) and dataclasses.is_dataclass(moved)


def test_the_type_checker_refuses_an_assignment_to_a_records_field(tmp_path: Path) -> None:
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        textwrap.dedent(
            """
            from aviator.runtime.records import record

            @record
            class Point:
                x: int

            p = Point(1)
            p.x = 2
            """
        )
    )
    out, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--follow-imports=silent", str(snippet)]
    )
    assert status == 1, out
    assert 'Property "x" defined in "Point" is read-only' in out
