"""Label selectors in their string form (aviator.kube.selectors): network input, so
arbitrary text either parses or raises SelectorError; what is rendered parses back to
the same selector; matching follows Kubernetes' semantics."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aviator.kube.selectors import (
    Requirement,
    Selector,
    SelectorError,
    parse_selector,
    valid_key,
    valid_value,
)

_name = st.from_regex(r"\A[a-z0-9]([-a-z0-9_.]{0,10}[a-z0-9])?\Z")
keys = st.one_of(_name, st.builds(lambda p, n: f"{p}.example/{n}", _name, _name)).filter(valid_key)
values = st.one_of(st.just(""), _name)
labels = st.dictionaries(keys, values, max_size=5)


@st.composite
def requirements(draw: st.DrawFn) -> Requirement:
    key = draw(keys)
    op = draw(st.sampled_from(["=", "!=", "in", "notin", "exists", "!"]))
    if op in ("exists", "!"):
        return Requirement(key, op)
    if op in ("=", "!="):
        return Requirement(key, op, (draw(values),))
    return Requirement(key, op, tuple(sorted(draw(st.sets(values, min_size=1, max_size=4)))))


selectors = st.lists(requirements(), max_size=6)


@pytest.mark.parametrize(
    ("text", "rendered"),
    [
        ("", ""),
        ("service=web", "service=web"),
        (" service == web ", "service=web"),
        ("service in (web, api),!canary", "!canary,service in (api,web)"),
        ("tier notin (db),app", "app,tier notin (db)"),
        ("app=", "app="),
        ("app in ()", "app in ()"),
        ("example.com/team!=core", "example.com/team!=core"),
    ],
)
def test_what_label_selectors_as_hpas_send_parse(text: str, rendered: str) -> None:
    assert parse_selector(text).render() == rendered


@pytest.mark.parametrize(
    "text",
    [
        "a<1",
        "a>1",
        "a in (b",
        "a in b",
        "=b",
        "a=b=c",
        "a,,b",
        "a,",
        "-a=b",
        "a=" + "x" * 64,
        "Upper.Case/a=b",
        "a b",
        "!",
        "a=b)",
        "a" * 5000,
    ],
)
def test_what_is_not_a_selector_is_refused(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError:
        return
    assert parse_selector(selector.render()) == selector


@given(st.text(alphabet="ab=!(), in\tnotx/.-_", max_size=60))
def test_selector_shaped_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError:
        return
    assert all(
        valid_key(r.key) and all(valid_value(v) for v in r.values) for r in selector.requirements
    )
    assert parse_selector(selector.render()) == selector


@given(selectors)
def test_rendering_parses_back_to_the_same_requirements(reqs: list[Requirement]) -> None:
    text = ",".join(r.render() for r in reqs)
    assert set(parse_selector(text).requirements) == set(reqs)


@given(selectors, labels)
def test_a_selector_matches_when_every_requirement_does(
    reqs: list[Requirement], held: dict[str, str]
) -> None:
    parsed = parse_selector(",".join(r.render() for r in reqs))
    assert parsed.matches(held) == all(r.matches(held) for r in reqs)


@given(keys, values, labels)
def test_kubernetes_matching_semantics(key: str, value: str, held: dict[str, str]) -> None:
    present = key in held
    assert Requirement(key, "=", (value,)).matches(held) == (present and held[key] == value)
    assert Requirement(key, "!=", (value,)).matches(held) == (not present or held[key] != value)
    assert Requirement(key, "in", (value,)).matches(held) == (present and held[key] == value)
    assert Requirement(key, "notin", (value,)).matches(held) == (not present or held[key] != value)
    assert Requirement(key, "exists").matches(held) == present
    assert Requirement(key, "!").matches(held) == (not present)


def test_equals_names_a_pinned_value() -> None:
    assert parse_selector("service=web,policy").equals("service") == "web"
    assert parse_selector("service in (web)").equals("service") == "web"
    assert parse_selector("service in (a,b)").equals("service") is None
    assert Selector().equals("service") is None
