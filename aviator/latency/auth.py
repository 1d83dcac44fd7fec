"""Who may stream latency: ServiceAccount bearer tokens checked with a TokenReview.

The controller accepts snapshots only from the agent's ServiceAccount(s). Every new
token costs one TokenReview against the API server; the verdict (accept or refuse)
is cached for a short TTL, keyed by a hash of the token, so reconnect storms do not
turn into API storms and no token is kept in memory in clear.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import aiohttp

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import TOKENREVIEWS

log = logging.getLogger(__name__)

SA_PREFIX = "system:serviceaccount:"


def service_account_username(spec: str) -> str:
    """ "NS:NAME" (the --agent-service-account flag form) or a full username → username."""
    if spec.startswith(SA_PREFIX):
        return spec
    ns, sep, name = spec.partition(":")
    if not sep or not ns or not name or ":" in name:
        raise ValueError(f"service account {spec!r} is not NAMESPACE:NAME")
    return f"{SA_PREFIX}{ns}:{name}"


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The verdict on one token: HTTP status 200 (allowed), 401, 403 or 503."""

    status: int
    username: str | None = None
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.status == 200


class TokenAuthenticator:
    """Validates bearer tokens with TokenReview and admits only configured users.

    `allowed` holds ServiceAccounts as "NS:NAME" or full usernames
    ("system:serviceaccount:NS:NAME"). `audiences`, when given, is sent with the
    review and the token must be valid for at least one of them. Verdicts are
    cached for `cache_ttl_s` (refusals for `negative_ttl_s`); an API server that
    cannot answer yields 503 and is not cached.
    """

    def __init__(
        self,
        client: KubeClient,
        allowed: Iterable[str],
        *,
        audiences: Sequence[str] = (),
        cache_ttl_s: float = 60.0,
        negative_ttl_s: float = 5.0,
        max_cache: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self.allowed = frozenset(service_account_username(s) for s in allowed)
        self.audiences = tuple(audiences)
        self._ttl = cache_ttl_s
        self._negative_ttl = negative_ttl_s
        self._max_cache = max_cache
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, AuthResult]] = OrderedDict()
        self.reviews = 0  # TokenReviews sent (for tests and metrics)

    async def authenticate(self, token: str) -> AuthResult:
        if not token:
            return AuthResult(401, reason="no bearer token")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        result = await self._review(token)
        if result.status != 503:
            ttl = self._ttl if result.allowed else self._negative_ttl
            self._cache[key] = (now + ttl, result)
            self._cache.move_to_end(key)
            while len(self._cache) > self._max_cache:
                self._cache.popitem(last=False)
        return result

    async def _review(self, token: str) -> AuthResult:
        spec: dict[str, object] = {"token": token}
        if self.audiences:
            spec["audiences"] = list(self.audiences)
        body = {"apiVersion": TOKENREVIEWS.api_version, "kind": TOKENREVIEWS.kind, "spec": spec}
        self.reviews += 1
        try:
            review = await self._client.create(TOKENREVIEWS, body)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("TokenReview failed: %s", exc)
            return AuthResult(503, reason="token review unavailable")
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return AuthResult(401, reason=str(status.get("error") or "token not authenticated"))
        username = str((status.get("user") or {}).get("username", ""))
        if self.audiences and not set(status.get("audiences") or ()) & set(self.audiences):
            return AuthResult(401, username, "token not valid for the expected audience")
        if username not in self.allowed:
            return AuthResult(403, username, f"{username} may not stream latency")
        return AuthResult(200, username)
