"""The external metrics API over HTTP (the shapes are aviator.controller.extmetrics,
the figures aviator.controller.servicelatency): two routes on the controller's one
HTTPS listener, and the APIService's `caBundle`.

Every replica serves it: each holds the informers and the latency store the agents
stream to, so the answer does not depend on which replica the API server's request
reaches, and a leader change does not interrupt an HPA.

Who may read: with secure serving, a request from the API server's front proxy (a
client certificate the TLS layer verified against the requestheader CA, an allowed
name, the user in `X-Remote-User`...: aviator.runtime.frontproxy), or one with a bearer
token (TokenReview); then a SubjectAccessReview: `list` of the metric (a resource of
`external.metrics.k8s.io`) in the namespace, or `get` of the discovery path. Without
secure serving (tests, one machine) nothing is checked, like /metrics.

`publish_ca_bundle`: the APIService `v1beta1.external.metrics.k8s.io`, when it routes to
this controller's Service, gets the stream CA (which signed the serving certificate) as
its `caBundle`, so the aggregator verifies the controller; an APIService routing
elsewhere (KEDA, prometheus-adapter) is left alone.
"""

from __future__ import annotations

import base64
import datetime
import logging
import time
from collections.abc import Callable

import orjson
from aiohttp import web

from aviator.controller import extmetrics
from aviator.controller.servicelatency import namespace_figures
from aviator.kube.client import ApiError, KubeClient
from aviator.kube.objects import JSON
from aviator.kube.resources import APISERVICES
from aviator.latency.store import LatencyStore
from aviator.reconcilers.view import Caches
from aviator.runtime.frontproxy import FrontProxy, peer_common_name, user_from
from aviator.runtime.httpauth import (
    Attributes,
    RequestAuthorizer,
    bearer,
    may,
    non_resource,
    resource,
)

log = logging.getLogger(__name__)


def _json(body: JSON, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _problem(code: int, reason: str, message: str) -> web.Response:
    return _json(extmetrics.status_body(code, reason, message), code)


class ExternalMetricsApi:
    """The routes; `front_proxy` is set once the API server's settings are read."""

    def __init__(
        self,
        caches: Caches,
        store: LatencyStore,
        authorizer: RequestAuthorizer | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._caches = caches
        self._store = store
        self._authorizer = authorizer
        self._clock = clock
        self._wall_clock = wall_clock
        self.front_proxy: FrontProxy | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(extmetrics.BASE_PATH, self.discovery)
        app.router.add_get(extmetrics.BASE_PATH + "/namespaces/{namespace}/{metric}", self.metric)

    async def _refusal(self, request: web.Request, attributes: Attributes) -> web.Response | None:
        """None when the request may proceed, else the answer refusing it."""
        if self._authorizer is None:
            return None
        user = None
        if self.front_proxy is not None and request.transport is not None:
            name = peer_common_name(request.transport.get_extra_info("peercert"))
            user = user_from(self.front_proxy, name, request.headers)
        if user is not None:
            status, reason = await self._authorizer.authorize_user(user, attributes)
        else:
            status, reason = await self._authorizer.authorize_token(bearer(request), attributes)
        if status == 200:
            return None
        reasons = {401: "Unauthorized", 403: "Forbidden", 429: "TooManyRequests"}
        answer = _problem(status, reasons.get(status, "ServiceUnavailable"), reason or "refused")
        if status == 429:
            answer.headers["Retry-After"] = "1"
        return answer

    async def discovery(self, request: web.Request) -> web.Response:
        refused = await self._refusal(request, non_resource(request.path))
        return refused or _json(extmetrics.resource_list())

    async def metric(self, request: web.Request) -> web.Response:
        try:
            wanted = extmetrics.parse_request(
                request.match_info["namespace"],
                request.match_info["metric"],
                request.query.get("labelSelector", ""),
            )
        except extmetrics.Problem as exc:
            return _json(exc.body(), exc.code)
        refused = await self._refusal(request, resource(extmetrics.resource_attributes(wanted)))
        if refused is not None:
            return refused
        services = namespace_figures(self._caches, self._store, wanted.namespace, self._clock())
        now = datetime.datetime.fromtimestamp(self._wall_clock(), datetime.UTC)
        return _json(extmetrics.value_list(wanted, services, now, self._store.window_s))


def ca_bundle_patch(
    apiservice: JSON, ca_pem: bytes, namespace: str, services: tuple[str, ...]
) -> JSON | None:
    """The merge patch giving `apiservice` the CA, when it routes to one of `services`
    in `namespace` and does not hold that CA yet; else None."""
    spec = apiservice.get("spec") or {}
    target = spec.get("service") or {}
    if target.get("namespace") != namespace or target.get("name") not in services:
        return None
    bundle = base64.b64encode(ca_pem).decode()
    if spec.get("caBundle") == bundle:
        return None
    return {"spec": {"caBundle": bundle, "insecureSkipTLSVerify": None}}


async def publish_ca_bundle(
    client: KubeClient, ca_pem: bytes, namespace: str, services: tuple[str, ...]
) -> bool:
    """Patch the APIService's caBundle (see the module docstring); True when patched.
    An APIService that is missing, or that this replica may not read (asked first: no
    refused request without config/external-metrics' RBAC), is left alone."""
    where = {
        "group": APISERVICES.group,
        "resource": APISERVICES.plural,
        "verb": "patch",
        "name": extmetrics.APISERVICE_NAME,
    }
    if not await may(client, where):
        return False
    try:
        found = await client.get(APISERVICES, extmetrics.APISERVICE_NAME)
    except ApiError as exc:
        if exc.status in (403, 404):
            return False
        raise
    patch = ca_bundle_patch(found, ca_pem, namespace, services)
    if patch is None:
        return False
    await client.patch(APISERVICES, extmetrics.APISERVICE_NAME, patch)
    log.info("APIService %s: caBundle set to the controller's CA", extmetrics.APISERVICE_NAME)
    return True
