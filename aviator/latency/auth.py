"""Who may stream latency, and for which node: ServiceAccount bearer tokens checked
with a TokenReview.

The controller accepts snapshots only from the agent's ServiceAccount(s), and learns
from the token which node the agent speaks for (admission.py keeps only that node's
pods). The node comes from the TokenReview's user, never from a message:

- the `authentication.kubernetes.io/node-name` extra, which the API server puts in
  tokens bound to a pod (projected ServiceAccount tokens, Kubernetes 1.30+ with
  ServiceAccountTokenPodNodeInfo, on by default since 1.30) or to a Node object;
- else, for a pod-bound token without it, the token's pod (the `pod-name` and
  `pod-uid` extras, in the ServiceAccount's namespace) looked up by `PodNodeResolver`
  and its `spec.nodeName`;
- a token bound to neither (a legacy Secret token, an unbound TokenRequest) names no
  node: refused with 403 when `require_node` (the default).

Every new token costs one TokenReview against the API server; the verdict (accept or
refuse, with the node) is cached for a short TTL, keyed by a hash of the token, so
reconnect storms do not turn into API storms and no token is kept in memory in clear.
Before a review, a token is read as the JWT every ServiceAccount token is
(`precheck`, unverified: it can only refuse): one that is no JWT, has expired or is
for another audience is refused without a review. The caller may ration reviews
(`admit_review`: HTTP 429 when it says no), and at most `max_in_flight` run at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import aiohttp

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import TOKENREVIEWS

log = logging.getLogger(__name__)

SA_PREFIX = "system:serviceaccount:"
NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"

MAX_TOKEN_BYTES = 16384  # ServiceAccount tokens are about 1 KiB
CLOCK_SKEW_S = 60.0  # an `exp` this far in the past may still be valid on the API server

# Whether a review may be spent now: (None, 0) or (refusal reason, seconds to wait).
ReviewAdmission = Callable[[], tuple[str | None, float]]

# (namespace, pod name, pod uid) → the node the pod is scheduled on, None when no such
# pod (or not scheduled); raises ApiError/aiohttp.ClientError/OSError when it cannot tell.
PodNodeResolver = Callable[[str, str, str], Awaitable[str | None]]


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
    """The verdict on one token: HTTP status 200 (allowed), 401, 403 or 503; when
    allowed, `node` is the node the token's holder speaks for (None only when the
    authenticator does not require one)."""

    status: int
    username: str | None = None
    reason: str = ""
    node: str | None = None
    retry_after_s: float = 0.0  # 429: when to ask again

    @property
    def allowed(self) -> bool:
        return self.status == 200


def precheck(token: str, audiences: Sequence[str], now: float) -> str | None:
    """Why `token` cannot be a valid ServiceAccount token for `audiences` (any, when
    empty) at wall-clock time `now`, read as an unverified JWT; None when it may be."""
    if len(token) > MAX_TOKEN_BYTES:
        return "token too long"
    parts = token.split(".")
    if len(parts) != 3:
        return "not a JWT"
    body = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (ValueError, binascii.Error):
        return "not a JWT"
    if not isinstance(claims, dict):
        return "not a JWT"
    exp = claims.get("exp")
    if isinstance(exp, int | float) and not isinstance(exp, bool) and exp + CLOCK_SKEW_S < now:
        return "token expired"
    if audiences:
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not set(audiences) & {a for a in auds if isinstance(a, str)}:
            return "token not valid for the expected audience"
    return None


class TokenAuthenticator:
    """Validates bearer tokens with TokenReview and admits only configured users.

    `allowed` holds ServiceAccounts as "NS:NAME" or full usernames
    ("system:serviceaccount:NS:NAME"). `audiences`, when given, is sent with the
    review and the token must be valid for at least one of them. Verdicts are
    cached for `cache_ttl_s` (refusals for `negative_ttl_s`); an API server that
    cannot answer yields 503 and is not cached. `resolve_pod_node` finds the node of
    a pod-bound token that does not name it (see the module docstring).
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
        wall_clock: Callable[[], float] = time.time,
        require_node: bool = True,
        resolve_pod_node: PodNodeResolver | None = None,
        max_in_flight: int = 8,
    ) -> None:
        self._client = client
        self._wall_clock = wall_clock
        self._in_flight = asyncio.Semaphore(max_in_flight)
        self.require_node = require_node
        self._resolve_pod_node = resolve_pod_node
        self.allowed = frozenset(service_account_username(s) for s in allowed)
        self.audiences = tuple(audiences)
        self._ttl = cache_ttl_s
        self._negative_ttl = negative_ttl_s
        self._max_cache = max_cache
        self._clock = clock
        self._cache: OrderedDict[str, tuple[float, AuthResult]] = OrderedDict()
        self.reviews = 0  # TokenReviews sent (for tests and metrics)

    async def authenticate(
        self, token: str, admit_review: ReviewAdmission | None = None
    ) -> AuthResult:
        """The verdict on `token`: cached, else refused by `precheck`, else (when
        `admit_review` allows it) asked of the API server."""
        if not token:
            return AuthResult(401, reason="no bearer token")
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        reason = precheck(token, self.audiences, self._wall_clock())
        if reason is not None:
            return AuthResult(401, reason=reason)
        if admit_review is not None:
            refusal, wait_s = admit_review()
            if refusal is not None:
                return AuthResult(429, reason=refusal, retry_after_s=wait_s)
        async with self._in_flight:
            result = await self._review(token)
        if result.status != 503:
            now = self._clock()
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
            log.warning("TokenReview failed: %r", exc)
            return AuthResult(503, reason="token review unavailable")
        status = review.get("status") or {}
        if not status.get("authenticated"):
            return AuthResult(401, reason=str(status.get("error") or "token not authenticated"))
        username = str((status.get("user") or {}).get("username", ""))
        if self.audiences and not set(status.get("audiences") or ()) & set(self.audiences):
            return AuthResult(401, username, "token not valid for the expected audience")
        if username not in self.allowed:
            return AuthResult(403, username, f"{username} may not stream latency")
        extra = (status.get("user") or {}).get("extra") or {}
        try:
            node = await self._node_of(username, extra)
        except (ApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("looking up the pod of a token failed: %s", exc)
            return AuthResult(503, username, "the token's pod cannot be looked up")
        if node is None and self.require_node:
            return AuthResult(
                403,
                username,
                "the token is bound to no pod or node: agents stream with a projected "
                "ServiceAccount token (bound to their pod), so the node they speak for is known",
            )
        return AuthResult(200, username, node=node)

    async def _node_of(self, username: str, extra: Mapping[str, object]) -> str | None:
        node = _single(extra, NODE_NAME_EXTRA)
        if node is not None:
            return node
        pod, uid = _single(extra, POD_NAME_EXTRA), _single(extra, POD_UID_EXTRA)
        if pod is None or uid is None or self._resolve_pod_node is None:
            return None
        namespace = username.removeprefix(SA_PREFIX).partition(":")[0]
        return await self._resolve_pod_node(namespace, pod, uid)


def _single(extra: Mapping[str, object], key: str) -> str | None:
    """The one non-empty value of a TokenReview user's `extra` key, else None."""
    values = extra.get(key)
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0] or None
    return None
