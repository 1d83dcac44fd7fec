"""An asyncio Kubernetes REST client over aiohttp that speaks raw JSON.

Configuration (kubeconfig, in-cluster service account, exec plugins, token refresh) is
delegated to kubernetes_asyncio's loaders; requests are ours, so hot paths (list, watch,
slices) never pay for typed-model conversion and watches are fully under our control.
`RequestClient` and `ListWatchClient` name the parts of it the Lease lock and the
Reflector use, so that anything with those methods can stand in for it.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import aiohttp
import orjson
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import ConfigException, load_incluster_config, load_kube_config

from aviator.kube.objects import JSON
from aviator.kube.projection import Projection
from aviator.kube.resources import Resource
from aviator.kube.watchstream import watch_events

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


class ApiError(Exception):
    """A non-2xx answer from the API server, with its Status body when there is one."""

    def __init__(self, status: int, body: JSON | None = None, text: str = "") -> None:
        self.status = status
        self.body = body or {}
        self.reason: str = str(self.body.get("reason", ""))
        self.message: str = str(self.body.get("message", text))
        super().__init__(f"{status} {self.reason}: {self.message}".strip())

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409

    @property
    def gone(self) -> bool:
        return self.status == 410


class RequestClient(Protocol):
    """The part of KubeClient that sends one request (what a Lease lock needs)."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
        decode: Callable[[bytes], JSON] | None = None,
    ) -> JSON: ...


class ListWatchClient(RequestClient, Protocol):
    """Requests and watches: the part of KubeClient a Reflector uses."""

    def watch(
        self,
        path: str,
        params: Mapping[str, str | int | bool] | None = None,
        *,
        drop_managed_fields: bool = False,
        projection: Projection | None = None,
    ) -> AsyncIterator[JSON]: ...


class KubeClient:
    """One aiohttp session to one API server. Create with `KubeClient.load(...)`."""

    def __init__(self, configuration: Configuration, *, connections: int = 64) -> None:
        self._cfg = configuration
        self.host: str = str(configuration.host).rstrip("/")
        self._ssl = self._ssl_context(configuration)
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    async def load(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
        """From an explicit kubeconfig, else $KUBECONFIG/~/.kube/config, else in-cluster."""
        cfg = Configuration()
        if kubeconfig is None:
            try:
                load_incluster_config(client_configuration=cfg)
                return cls(cfg)
            except ConfigException:
                pass
        await load_kube_config(config_file=kubeconfig, context=context, client_configuration=cfg)
        return cls(cfg)

    @staticmethod
    def _ssl_context(cfg: Configuration) -> ssl.SSLContext | bool:
        if not str(cfg.host).startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert)
        if not cfg.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cfg.cert_file:
            ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
        return ctx

    def _session_or_new(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
            )
        return self._session

    def fork(self, *, connections: int = 64) -> KubeClient:
        """A client to the same API server, with the same credentials, on a connection
        pool of its own (at most `connections`): requests that must not queue behind
        others (Lease renewals) or must not crowd them out (TokenReviews) get one."""
        return KubeClient(self._cfg, connections=connections)

    async def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        token = await self._cfg.get_api_key_with_prefix("BearerToken")
        if token:
            headers["Authorization"] = token if " " in token else f"Bearer {token}"
        return headers

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> KubeClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int | bool] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
        decode: Callable[[bytes], JSON] | None = None,
    ) -> JSON:
        """Send one request and return the decoded JSON body (`decode`: how to decode a
        successful one, e.g. a projection's list); raise ApiError on failure."""
        session = self._session_or_new()
        data = None if body is None else (body if isinstance(body, str) else orjson.dumps(body))
        async with session.request(
            method,
            self.host + path,
            params=_params(params),
            data=data,
            headers=await self._headers(content_type if data is not None else None),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                text = raw.decode(errors="replace")
                raise ApiError(resp.status, _maybe_json(raw), text)
            if decode is not None:
                return decode(raw)
            return _maybe_json(raw) or {}

    def watch(
        self,
        path: str,
        params: Mapping[str, str | int | bool] | None = None,
        *,
        drop_managed_fields: bool = False,
        projection: Projection | None = None,
    ) -> AsyncIterator[JSON]:
        """Stream watch events ({"type", "object"}) until the server closes the stream.

        An ERROR event is yielded as is; the caller decides (e.g. 410 → relist). With
        drop_managed_fields, objects come without metadata.managedFields, which is then
        not even decoded; with a projection, with only its fields (aviator.kube.watchstream).
        """
        return watch_events(
            self.watch_body(path, params),
            drop_managed_fields=drop_managed_fields,
            projection=projection,
        )

    async def watch_body(
        self, path: str, params: Mapping[str, str | int | bool] | None = None
    ) -> AsyncGenerator[bytes, None]:
        """A watch's response body as the server sends it, in chunks as they arrive."""
        session = self._session_or_new()
        query = dict(params or {})
        query["watch"] = "true"
        async with session.get(
            self.host + path,
            params=_params(query),
            headers=await self._headers(None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=None),
        ) as resp:
            if resp.status >= 400:
                raw = await resp.read()
                raise ApiError(resp.status, _maybe_json(raw), raw.decode(errors="replace"))
            async for chunk in resp.content.iter_any():
                yield chunk

    # Conveniences over request() for one Resource.

    async def get(self, res: Resource, name: str, namespace: str | None = None) -> JSON:
        return await self.request("GET", res.path(namespace, name))

    async def list(
        self,
        res: Resource,
        namespace: str | None = None,
        params: Mapping[str, str | int | bool] | None = None,
    ) -> JSON:
        return await self.request("GET", res.path(namespace), params=params)

    async def create(self, res: Resource, body: JSON, namespace: str | None = None) -> JSON:
        ns = namespace or body.get("metadata", {}).get("namespace")
        return await self.request("POST", res.path(ns), body=body)

    async def replace(
        self,
        res: Resource,
        body: JSON,
        namespace: str | None = None,
        subresource: str | None = None,
    ) -> JSON:
        meta = body["metadata"]
        ns = namespace or meta.get("namespace")
        return await self.request("PUT", res.path(ns, meta["name"], subresource), body=body)

    async def patch(
        self,
        res: Resource,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        content_type: str = MERGE_PATCH,
        subresource: str | None = None,
        params: Mapping[str, str | int | bool] | None = None,
    ) -> JSON:
        return await self.request(
            "PATCH",
            res.path(namespace, name, subresource),
            body=patch,
            content_type=content_type,
            params=params,
        )

    async def delete(
        self, res: Resource, name: str, namespace: str | None = None, body: JSON | None = None
    ) -> JSON:
        return await self.request("DELETE", res.path(namespace, name), body=body)


def _params(params: Mapping[str, str | int | bool] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {
        k: ("true" if v is True else "false" if v is False else str(v)) for k, v in params.items()
    }


def _maybe_json(raw: bytes) -> JSON | None:
    try:
        value = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
