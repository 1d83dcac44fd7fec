"""Requests the API server's aggregation layer forwards: who sent them, from the
front proxy's client certificate and its `X-Remote-*` headers, as every extension API
server reads them (k8s.io/apiserver's requestheader authenticator).

The API server publishes how it proxies in the ConfigMap
`kube-system/extension-apiserver-authentication` (readable with the Role
`extension-apiserver-authentication-reader`): the CA that signs the front proxy's
client certificate (`requestheader-client-ca-file`), the certificate names it may
carry (`requestheader-allowed-names`, JSON; empty: any the CA signed) and the header
names of the user, uid, groups and extra (`requestheader-*-headers`,
`requestheader-extra-headers-prefix`). `parse_config` reads it (pure); `user_from`
names the user of one request whose client certificate the TLS layer verified against
that CA (pure); `load` reads the ConfigMap. Headers are believed only on a connection
whose certificate chains to that CA and names an allowed name: anyone else sending
`X-Remote-User` is nobody.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multidict import MultiMapping

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import CONFIGMAPS
from aviator.runtime.httpauth import User, may

log = logging.getLogger(__name__)

CONFIGMAP_NAMESPACE = "kube-system"
CONFIGMAP_NAME = "extension-apiserver-authentication"


@dataclass(frozen=True, slots=True)
class FrontProxy:
    """How the API server's front proxy names users (see the module docstring)."""

    ca_pem: bytes
    allowed_names: frozenset[str] = frozenset()
    username_headers: tuple[str, ...] = ("X-Remote-User",)
    uid_headers: tuple[str, ...] = ()
    group_headers: tuple[str, ...] = ("X-Remote-Group",)
    extra_prefixes: tuple[str, ...] = ("X-Remote-Extra-",)


def _names(raw: str | None) -> tuple[str, ...] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return ()
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def parse_config(data: Mapping[str, Any]) -> FrontProxy | None:
    """The front proxy's settings from the ConfigMap's data; None when the API server
    runs no aggregation layer (no requestheader CA)."""
    ca = data.get("requestheader-client-ca-file")
    if not isinstance(ca, str) or "BEGIN CERTIFICATE" not in ca:
        return None
    defaults = FrontProxy(b"")
    return FrontProxy(
        ca_pem=ca.encode(),
        allowed_names=frozenset(_names(data.get("requestheader-allowed-names")) or ()),
        username_headers=_names(data.get("requestheader-username-headers"))
        or defaults.username_headers,
        uid_headers=_names(data.get("requestheader-uid-headers")) or (),
        group_headers=_names(data.get("requestheader-group-headers")) or defaults.group_headers,
        extra_prefixes=_names(data.get("requestheader-extra-headers-prefix"))
        or defaults.extra_prefixes,
    )


def peer_common_name(peercert: Any) -> str | None:
    """The common name of a verified peer certificate (ssl's `getpeercert()` form), None
    without one."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject") or ():
        for attr in rdn:
            if len(attr) == 2 and attr[0] == "commonName":
                return str(attr[1])
    return None


def user_from(
    proxy: FrontProxy, common_name: str | None, headers: MultiMapping[str]
) -> User | None:
    """The user the front proxy names in `headers`, when the connection's verified
    client certificate (`common_name`) is the front proxy's; else None."""
    if common_name is None:
        return None
    if proxy.allowed_names and common_name not in proxy.allowed_names:
        return None
    name = next((v for h in proxy.username_headers for v in headers.getall(h, ()) if v), "")
    if not name:
        return None
    uid = next((v for h in proxy.uid_headers for v in headers.getall(h, ()) if v), "")
    groups = tuple(v for h in proxy.group_headers for v in headers.getall(h, ()))
    extra: dict[str, list[str]] = {}
    for header, value in headers.items():
        for prefix in proxy.extra_prefixes:
            if header.lower().startswith(prefix.lower()) and len(header) > len(prefix):
                key = urllib.parse.unquote(header[len(prefix) :].lower())
                extra.setdefault(key, []).append(value)
    return User(name, uid, groups, {k: tuple(v) for k, v in extra.items()})


async def load(client: KubeClient) -> FrontProxy | None:
    """The front proxy's settings from the API server's ConfigMap; None when there are
    none or the ConfigMap may not be read (then only bearer tokens authenticate). Asks
    first whether it may read it: without the optional RBAC, no refused request."""
    where = {
        "verb": "get",
        "resource": "configmaps",
        "namespace": CONFIGMAP_NAMESPACE,
        "name": CONFIGMAP_NAME,
    }
    if not await may(client, where):
        return None
    try:
        found = await client.get(CONFIGMAPS, CONFIGMAP_NAME, CONFIGMAP_NAMESPACE)
    except ApiError as exc:
        if exc.status in (403, 404):
            log.info(
                "front-proxy authentication off: %s/%s is not readable (%s)",
                CONFIGMAP_NAMESPACE,
                CONFIGMAP_NAME,
                exc.status,
            )
            return None
        raise
    return parse_config(found.get("data") or {})
