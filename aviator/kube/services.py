"""Facts about a Service: which pods back it (pure).

A Service taken over by Aviator has no selector; the one it had is kept in the
annotation `marks.ANNOTATION_ORIGINAL_SELECTOR`, and still says which pods back it.
"""

from __future__ import annotations

import json

from aviator.kube.marks import ANNOTATION_ORIGINAL_SELECTOR
from aviator.kube.objects import Service, annotations_of


def original_selector(service: Service) -> dict[str, str] | None:
    """The selector saved in the takeover annotation, if any (and well-formed)."""
    raw = annotations_of(service).get(ANNOTATION_ORIGINAL_SELECTOR)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in value.items()}


def pod_selector(service: Service) -> dict[str, str]:
    """Which pods back the Service: its selector, else the one saved by a takeover."""
    selector = service.get("spec", {}).get("selector") or {}
    if selector:
        return {str(k): str(v) for k, v in selector.items()}
    return original_selector(service) or {}


def is_headless(service: Service) -> bool:
    """clusterIP None: clients resolve the pods' addresses themselves (DNS)."""
    return bool(service.get("spec", {}).get("clusterIP") == "None")
