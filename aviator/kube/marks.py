"""The marks Aviator puts on Kubernetes objects: labels, annotations, the finalizer and
the controller ownerReference to an AviatorPolicy (pure).

Everything Aviator writes is recognisable by these marks, so cleanup and the event
mapping never have to guess which objects are ours. Our own marks are prefixed with
the API group, which the API defines (`aviator.api.types.GROUP`); the well-known
Kubernetes labels we set or read are named here too, once.
"""

from __future__ import annotations

from aviator.api.types import API_VERSION, GROUP, KIND
from aviator.kube.objects import JSON

# Value of endpointslice.kubernetes.io/managed-by on our slices.
MANAGER = GROUP
LABEL_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
LABEL_POLICY = f"{GROUP}/policy"
# Marks our shadow Services (kubernetes' own managed-by label, not the slice one).
LABEL_APP_MANAGED_BY = "app.kubernetes.io/managed-by"
APP_MANAGER = "aviator"

# Node labels: the box sets them on its Nodes; the controller reads the zone for the
# endpoints of its slices.
LABEL_HOSTNAME = "kubernetes.io/hostname"
LABEL_OS = "kubernetes.io/os"
LABEL_ZONE = "topology.kubernetes.io/zone"
# Marks the Nodes of the cluster in a box.
LABEL_BOX_NODE = f"{GROUP}/box"

ANNOTATION_ORIGINAL_SELECTOR = f"{GROUP}/original-selector"
ANNOTATION_TAKEN_OVER_BY = f"{GROUP}/taken-over-by"
# On a policy: a new value starts a new takeover round (a restored Service may be taken
# over again), as a change of the spec does.
ANNOTATION_RETAKE = f"{GROUP}/retake"

# On a policy, with sharding on: which controller replica may write it, as
# "<identity>@<term>" (aviator/sharding/claims.py); changed only with a resourceVersion
# precondition.
ANNOTATION_SHARD = f"{GROUP}/shard"
# On a shard member's Lease: lets replicas list and watch each other's member Leases.
LABEL_SHARD_MEMBER = f"{GROUP}/shard-member"

FINALIZER = f"{GROUP}/cleanup"

# reportingController of the Events the controller records.
REPORTING_CONTROLLER = f"{GROUP}/controller"

SLICE_SELECTOR = f"{LABEL_MANAGED_BY}={MANAGER}"

# Slices Kubernetes itself makes for a Service. Removing a Service's selector does NOT
# make these controllers delete them (kubernetes/kubernetes#118376, working as
# intended upstream), so a takeover deletes them itself once the selector is gone.
BUILTIN_MANAGERS = ("endpointslice-controller.k8s.io", "endpointslicemirroring-controller.k8s.io")
BUILTIN_SLICE_SELECTOR = f"{LABEL_MANAGED_BY} in ({','.join(BUILTIN_MANAGERS)})"


def owner_reference(policy_name: str, policy_uid: str) -> JSON:
    """The controller ownerReference every object we create carries."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": policy_name,
        "uid": policy_uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def controller_owner(obj: JSON) -> tuple[str, str] | None:
    """(name, uid) of the AviatorPolicy that controls `obj`, if one does."""
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if (
            ref.get("controller")
            and ref.get("kind") == KIND
            and str(ref.get("apiVersion", "")).startswith(GROUP + "/")
        ):
            return str(ref.get("name", "")), str(ref.get("uid", ""))
    return None


def is_owned_by(obj: JSON, policy_uid: str) -> bool:
    return (owner := controller_owner(obj)) is not None and owner[1] == policy_uid
