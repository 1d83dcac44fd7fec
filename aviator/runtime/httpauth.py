"""Who may read per-pod data over HTTP: the bearer token is checked with a
TokenReview, the request with a SubjectAccessReview for its non-resource URL (what
controller-runtime's metrics filter, WithAuthenticationAndAuthorization, does), or for
a resource (`authorize_token` with `resource(...)`: the external metrics API). A user
the API server's front proxy already authenticated (aviator.runtime.frontproxy) needs
the SubjectAccessReview only (`authorize_user`).

A scraper needs a ServiceAccount bound to a ClusterRole allowing `get` on the paths
(config/rbac/metrics-reader.yaml: `/metrics`, `/latency`, `/status`). Verdicts are
cached by (hash of the token or user, the attributes) for `cache_ttl_s` (refusals for
`negative_ttl_s`); tokens that cannot be ServiceAccount tokens are refused without a
review (aviator.latency.auth.precheck); new reviews are rationed (`reviews_per_s`,
burst `reviews_burst`: 429 beyond) and run on whatever client the caller gives (the
controller's: a small connection pool of its own).

Answers: no or bad token 401, not allowed 403, over the ration 429, API server
unreachable 503. `protect` wraps the given paths of an aiohttp app; the others
(/healthz, /readyz: no data) stay open.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import SELFSUBJECTACCESSREVIEWS, SUBJECTACCESSREVIEWS, TOKENREVIEWS
from aviator.latency.auth import precheck
from aviator.latency.limits import TokenBucket

log = logging.getLogger(__name__)

Verdict = tuple[int, str]  # (HTTP status, reason)
Attributes = dict[str, Any]  # a SubjectAccessReview's resource or non-resource attributes
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestAuthorizer:
    """TokenReview + SubjectAccessReview with a cache; see the module docstring."""

    def __init__(
        self,
        client: KubeClient,
        *,
        cache_ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        max_cache: int = 1024,
        reviews_per_s: float = 5.0,
        reviews_burst: int = 20,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._ttl = cache_ttl_s
        self._negative_ttl = negative_ttl_s
        self._max_cache = max_cache
        self._clock = clock
        self._wall_clock = wall_clock
        self._reviews = TokenBucket(reviews_per_s, reviews_burst, clock)
        self._cache: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()
        self.reviews = 0  # TokenReviews + SubjectAccessReviews sent

    async def authorize(self, token: str, path: str, verb: str = "get") -> Verdict:
        """May the bearer of `token` `verb` the non-resource URL `path`?"""
        return await self.authorize_token(token, non_resource(path, verb))

    async def authorize_token(self, token: str, attributes: Attributes) -> Verdict:
        """May the bearer of `token` do what `attributes` say (a SubjectAccessReview's
        `nonResourceAttributes` or `resourceAttributes`, see `non_resource`)?"""
        if not token:
            return 401, "no bearer token"
        hit = self._cached(f"token {token}", attributes)
        if hit is not None:
            return hit
        reason = precheck(token, (), self._wall_clock())
        if reason is not None:
            return 401, reason
        if not self._reviews.take():
            return 429, "reviews over their rate"
        return self._remember(f"token {token}", attributes, await self._review(token, attributes))

    async def authorize_user(self, user: User, attributes: Attributes) -> Verdict:
        """May `user`, already authenticated (e.g. by the API server's front proxy), do
        what `attributes` say? A SubjectAccessReview only."""
        if not user.name:
            return 401, "no user"
        who = f"user {user.name} {user.uid} {sorted(user.groups)} {sorted(user.extra.items())}"
        hit = self._cached(who, attributes)
        if hit is not None:
            return hit
        if not self._reviews.take():
            return 429, "reviews over their rate"
        try:
            verdict = await self._access(user, attributes)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("reviewing a request of %s failed: %r", user.name, exc)
            verdict = 503, "review unavailable"
        return self._remember(who, attributes, verdict)

    def _key(self, who: str, attributes: Attributes) -> str:
        return hashlib.sha256(f"{sorted(attributes.items())!r} {who}".encode()).hexdigest()

    def _cached(self, who: str, attributes: Attributes) -> Verdict | None:
        hit = self._cache.get(self._key(who, attributes))
        return hit[1] if hit is not None and hit[0] > self._clock() else None

    def _remember(self, who: str, attributes: Attributes, verdict: Verdict) -> Verdict:
        if verdict[0] != 503:
            key = self._key(who, attributes)
            ttl = self._ttl if verdict[0] == 200 else self._negative_ttl
            self._cache[key] = (self._clock() + ttl, verdict)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_cache:
                self._cache.popitem(last=False)
        return verdict

    async def _review(self, token: str, attributes: Attributes) -> Verdict:
        try:
            self.reviews += 1
            review = await self._client.create(
                TOKENREVIEWS,
                {
                    "apiVersion": TOKENREVIEWS.api_version,
                    "kind": TOKENREVIEWS.kind,
                    "spec": {"token": token},
                },
            )
            status = review.get("status") or {}
            if not status.get("authenticated"):
                return 401, str(status.get("error") or "token not authenticated")
            info: dict[str, Any] = status.get("user") or {}
            user = User(
                str(info.get("username", "")),
                str(info.get("uid", "")),
                tuple(info.get("groups") or ()),
                {str(k): tuple(v) for k, v in (info.get("extra") or {}).items()},
            )
            return await self._access(user, attributes)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("reviewing a request (%s) failed: %r", attributes, exc)
            return 503, "review unavailable"

    async def _access(self, user: User, attributes: Attributes) -> Verdict:
        self.reviews += 1
        access = await self._client.create(
            SUBJECTACCESSREVIEWS,
            {
                "apiVersion": SUBJECTACCESSREVIEWS.api_version,
                "kind": SUBJECTACCESSREVIEWS.kind,
                "spec": {
                    "user": user.name,
                    "uid": user.uid,
                    "groups": list(user.groups),
                    "extra": {k: list(v) for k, v in user.extra.items()},
                    **attributes,
                },
            },
        )
        if not (access.get("status") or {}).get("allowed"):
            return 403, f"{user.name} may not {_describe(attributes)}"
        return 200, ""


@dataclass(frozen=True, slots=True)
class User:
    """Who a request comes from, as the API server names users."""

    name: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


async def may(client: KubeClient, attributes: Mapping[str, str]) -> bool:
    """May `client`'s own identity do what the resource `attributes` say? A
    SelfSubjectAccessReview (every authenticated user may ask): how a component finds
    out, without a refused request in the audit log, whether an optional part of its
    RBAC is installed."""
    review = await client.create(
        SELFSUBJECTACCESSREVIEWS,
        {
            "apiVersion": SELFSUBJECTACCESSREVIEWS.api_version,
            "kind": SELFSUBJECTACCESSREVIEWS.kind,
            "spec": {"resourceAttributes": dict(attributes)},
        },
    )
    return bool((review.get("status") or {}).get("allowed"))


def non_resource(path: str, verb: str = "get") -> Attributes:
    """A SubjectAccessReview's attributes for `verb` on the non-resource URL `path`."""
    return {"nonResourceAttributes": {"path": path, "verb": verb}}


def resource(attributes: Mapping[str, str]) -> Attributes:
    """A SubjectAccessReview's attributes for a resource request (group, version,
    resource, namespace, verb, ...)."""
    return {"resourceAttributes": dict(attributes)}


def _describe(attributes: Attributes) -> str:
    if "nonResourceAttributes" in attributes:
        a = attributes["nonResourceAttributes"]
        return f"{a.get('verb')} {a.get('path')}"
    a = attributes.get("resourceAttributes") or {}
    where = f" in {a['namespace']}" if a.get("namespace") else ""
    return f"{a.get('verb')} {a.get('resource')}.{a.get('group')}{where}"


def bearer(request: web.Request) -> str:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def protect(authorizer: RequestAuthorizer, paths: Collection[str]) -> Any:
    """An aiohttp middleware admitting requests to `paths` only when authorized."""
    guarded = frozenset(paths)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in guarded:
            return await handler(request)
        status, reason = await authorizer.authorize(bearer(request), request.path)
        if status == 200:
            return await handler(request)
        headers = {"WWW-Authenticate": 'Bearer realm="aviator"'} if status == 401 else {}
        if status == 429:
            headers["Retry-After"] = "1"
        return web.Response(status=status, text=reason or "refused", headers=headers)

    return middleware
