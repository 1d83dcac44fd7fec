"""How the controller's informers feed its queue: every event → the AviatorPolicy keys
it concerns (through `aviator.reconcilers.mapping`), and pod deletes → the latency
store forgetting their IPs. Our own status writes to a policy enqueue nothing."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from aviator.informers import FuncHandler
from aviator.informers.keys import JSON, DeletedFinalStateUnknown, unwrap_tombstone
from aviator.kube import marks
from aviator.reconcilers import mapping
from aviator.reconcilers.view import index_by_service_name

if TYPE_CHECKING:
    from aviator.controller.app import ControllerApp


def wire_handlers(app: ControllerApp) -> None:
    """Every informer event → the policy keys it concerns, and pod deletes → the store."""
    policies, services = app.caches.policies, app.caches.services
    c = app.controller

    def policy_keys(obj: JSON) -> Iterable[str]:
        # The policy itself, and every policy routing the same Service: a deleted or
        # retargeted winner of a Conflict lets the next one take over at once.
        keys = {mapping.policy_key(obj)}
        for idx in mapping.index_by_routed(obj):
            keys |= {mapping.policy_key(p) for p in policies.by_index(mapping.INDEX_BY_ROUTED, idx)}
        return keys

    keys = c.handler_for(policy_keys)

    def policy_changed(old: JSON, new: JSON) -> None:
        # Our own status writes must not trigger reconciles: only spec and the
        # metadata that matters (deletion, finalizers, identity).
        if _policy_matters(old) != _policy_matters(new):
            keys.on_update(old, new)

    app.policy_informer.add_event_handler(
        FuncHandler(add=keys.on_add, update=policy_changed, delete=keys.on_delete), "policy"
    )
    app.service_informer.add_event_handler(
        c.handler_for(lambda s: mapping.keys_for_service(s, policies)), "service"
    )
    app.pod_informer.add_event_handler(
        c.handler_for(lambda p: mapping.keys_for_pod(p, policies, services)), "pod"
    )
    app.slice_informer.add_event_handler(c.handler_for(mapping.keys_for_slice), "slice")

    def builtin_slice_keys(obj: JSON) -> Iterable[str]:
        # Kubernetes' own slices matter to the policy that took their Service over.
        return {
            mapping.policy_key(p)
            for idx in index_by_service_name(obj)
            for p in policies.by_index(mapping.INDEX_BY_ROUTED, idx)
        }

    app.builtin_slice_informer.add_event_handler(c.handler_for(builtin_slice_keys), "builtin-slice")

    def forget_pod(obj: JSON | DeletedFinalStateUnknown) -> None:
        # A deleted pod's IP may be reused: its old latency must not follow the IP.
        pod = unwrap_tombstone(obj)
        for ip in (pod.get("status") or {}).get("podIPs") or []:
            if ip.get("ip"):
                app.store.forget(str(ip["ip"]))

    app.pod_informer.add_event_handler(FuncHandler(delete=forget_pod), "pod-forget")


def _policy_matters(policy: JSON) -> tuple[object, ...]:
    meta = policy.get("metadata") or {}
    return (
        meta.get("uid"),
        meta.get("generation"),
        meta.get("deletionTimestamp"),
        tuple(meta.get("finalizers") or ()),
        repr(policy.get("spec")),
        (meta.get("annotations") or {}).get(marks.ANNOTATION_RETAKE),  # a new takeover round
    )
