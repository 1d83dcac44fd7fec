"""Kubernetes objects as Aviator holds them, and facts every kind shares (pure).

Objects stay the raw JSON dicts the API server sends: informer caches hold them as
decoded, and the hot paths (planning over thousands of pods, the agent's IP lookups)
read them without copying or wrapping. The aliases below name the kind a function
expects; they are not TypedDicts because every object arrives as `dict[str, Any]`
from an informer cache, and a TypedDict would need a cast at each of those places.

The accessors for each kind live next to these: `aviator.kube.pods` (Pod),
`aviator.kube.services` (Service); Aviator's own marks on any object are in
`aviator.kube.marks`; the Lease's leader election record is
`aviator.leaderelection.record`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

JSON: TypeAlias = dict[str, Any]
Pod: TypeAlias = JSON  # core/v1
Service: TypeAlias = JSON  # core/v1
EndpointSlice: TypeAlias = JSON  # discovery.k8s.io/v1
Lease: TypeAlias = JSON  # coordination.k8s.io/v1


def labels_of(obj: JSON) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("labels") or {})


def annotations_of(obj: JSON) -> dict[str, str]:
    return dict(obj.get("metadata", {}).get("annotations") or {})


def selector_matches(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    """Equality-based selector match; an EMPTY selector matches nothing (never "all")."""
    if not selector:
        return False
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())
