"""Who may read per-pod data over HTTP: the bearer token is checked with a
TokenReview, the request with a SubjectAccessReview for its non-resource URL (what
controller-runtime's metrics filter, WithAuthenticationAndAuthorization, does).

A scraper needs a ServiceAccount bound to a ClusterRole allowing `get` on the paths
(config/rbac/metrics-reader.yaml: `/metrics`, `/latency`, `/status`). Verdicts are
cached by (hash of the token, path, verb) for `cache_ttl_s` (refusals for
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
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import aiohttp
from aiohttp import web

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import SUBJECTACCESSREVIEWS, TOKENREVIEWS
from aviator.latency.auth import precheck
from aviator.latency.limits import TokenBucket

log = logging.getLogger(__name__)

Verdict = tuple[int, str]  # (HTTP status, reason)
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
        if not token:
            return 401, "no bearer token"
        key = hashlib.sha256(f"{verb} {path} {token}".encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > self._clock():
            return hit[1]
        reason = precheck(token, (), self._wall_clock())
        if reason is not None:
            return 401, reason
        if not self._reviews.take():
            return 429, "reviews over their rate"
        verdict = await self._review(token, path, verb)
        if verdict[0] != 503:
            ttl = self._ttl if verdict[0] == 200 else self._negative_ttl
            self._cache[key] = (self._clock() + ttl, verdict)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_cache:
                self._cache.popitem(last=False)
        return verdict

    async def _review(self, token: str, path: str, verb: str) -> Verdict:
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
            user: dict[str, Any] = status.get("user") or {}
            self.reviews += 1
            access = await self._client.create(
                SUBJECTACCESSREVIEWS,
                {
                    "apiVersion": SUBJECTACCESSREVIEWS.api_version,
                    "kind": SUBJECTACCESSREVIEWS.kind,
                    "spec": {
                        "user": user.get("username", ""),
                        "uid": user.get("uid", ""),
                        "groups": user.get("groups") or [],
                        "extra": user.get("extra") or {},
                        "nonResourceAttributes": {"path": path, "verb": verb},
                    },
                },
            )
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("reviewing a request to %s failed: %r", path, exc)
            return 503, "review unavailable"
        if not (access.get("status") or {}).get("allowed"):
            return 403, f"{user.get('username')} may not {verb} {path}"
        return 200, ""


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
