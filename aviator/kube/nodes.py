"""Facts about a Node: zone, readiness, allocatable CPU, control-plane role (pure).

The controller reads them to put topology on its endpoints: the zone of each
endpoint, and, for Services with `service.kubernetes.io/topology-mode: Auto`, how
much CPU each zone has (the share of endpoints a zone gets follows it, as in the
built-in EndpointSlice controller).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

from aviator.kube.marks import LABEL_ZONE
from aviator.kube.objects import JSON, labels_of

# Nodes with either label are left out of zone capacity, as kube-controller-manager does.
CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")

_QUANTITY = re.compile(r"^([+-]?[0-9]*\.?[0-9]+)([a-zA-Z]*|[eE][+-]?[0-9]+)$")
_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "u": Decimal("0.000001"),
    "n": Decimal("0.000000001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}


def zone_of(node: JSON) -> str | None:
    zone = labels_of(node).get(LABEL_ZONE)
    return str(zone) if zone else None


def is_ready(node: JSON) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def is_control_plane(node: JSON) -> bool:
    labels = labels_of(node)
    return any(k in labels for k in CONTROL_PLANE_LABELS)


def quantity_millis(text: object) -> int | None:
    """A Kubernetes quantity ("4", "3500m", "1.5", "2k") in thousandths, rounded up
    like `Quantity.MilliValue`; None when unreadable."""
    match = _QUANTITY.match(str(text).strip()) if text is not None else None
    if match is None:
        return None
    number, suffix = match.groups()
    try:
        value = Decimal(number)
        if suffix[:1] in ("e", "E") and suffix[1:]:
            scale = Decimal(10) ** int(suffix[1:])
        elif suffix in _SUFFIX:
            scale = _SUFFIX[suffix]
        else:
            return None
        return math.ceil(value * scale * 1000)
    except (InvalidOperation, ValueError):
        return None


def allocatable_cpu_millis(node: JSON) -> int:
    """status.allocatable.cpu in millicores (0 when absent or unreadable)."""
    raw = ((node.get("status") or {}).get("allocatable") or {}).get("cpu")
    return quantity_millis(raw) or 0
