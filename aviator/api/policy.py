"""An AviatorPolicy object as the controller works with it: identity from metadata,
typed spec and status, decoded from what the API server returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aviator.api.codec import FieldError, PolicyError
from aviator.api.rules import MAX_NAME_LENGTH
from aviator.api.schema import Rule
from aviator.api.status import AviatorPolicyStatus
from aviator.api.types import AviatorPolicySpec


@dataclass(frozen=True, kw_only=True)
class AviatorPolicy:
    """An AviatorPolicy object: identity from metadata, typed spec and status."""

    name: str
    namespace: str
    spec: AviatorPolicySpec
    uid: str = ""
    generation: int = 0
    status: AviatorPolicyStatus | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def from_dict(obj: Mapping[str, Any]) -> AviatorPolicy:
    """Decode a raw AviatorPolicy (as the API server returns it).

    Missing spec fields get their defaults; invalid ones raise PolicyError listing
    every problem with its field path. An unreadable status is treated as absent (the
    controller rebuilds it), since it must never block reconciling the spec.
    """
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        meta = {}
    name = str(meta.get("name") or "")
    namespace = str(meta.get("namespace") or "")
    where = f"{namespace}/{name}" if namespace else name
    errors: list[FieldError] = []
    if len(name) > MAX_NAME_LENGTH:
        errors.append(FieldError("metadata.name", _NAME_MESSAGE))
    spec: AviatorPolicySpec | None = None
    try:
        spec = AviatorPolicySpec.from_dict(obj.get("spec"))
    except PolicyError as exc:
        errors.extend(exc.errors)
    if errors or spec is None:
        raise PolicyError(errors, subject=f"AviatorPolicy {where}")
    try:
        status: AviatorPolicyStatus | None = AviatorPolicyStatus.from_dict(obj.get("status"))
    except PolicyError:
        status = None
    generation = meta.get("generation")
    return AviatorPolicy(
        name=name,
        namespace=namespace,
        uid=str(meta.get("uid") or ""),
        generation=generation if isinstance(generation, int) else 0,
        spec=spec,
        status=status,
    )


_NAME_MESSAGE = (
    f"metadata.name must be at most {MAX_NAME_LENGTH} characters (it is used as a label value)"
)
ROOT_RULES: tuple[Rule, ...] = (
    Rule(
        cel=f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        message=_NAME_MESSAGE,
        holds=lambda name: len(name) <= MAX_NAME_LENGTH,
    ),
)
