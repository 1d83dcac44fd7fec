"""The stream's CA and serving certificate, kept by the controller in its namespace.

- Secret `aviator-stream-tls` (type kubernetes.io/tls): `tls.crt`, `tls.key` (the
  serving certificate, valid for the names of the stream Service, one year) and
  `ca.crt`, `ca.key` (the CA that signed it, ten years). Only the controller reads it.
- ConfigMap `aviator-stream-ca`: `ca.crt`, the CA's certificate, which the agent
  DaemonSet mounts to verify the controller.

Replicas share one certificate: the first to find no Secret creates it (a 409 means
another replica did; it reads theirs). Every replica looks again every hour
(`StreamCertificates.run`) and re-issues the serving certificate from the CA when it
expires within 30 days or does not name the Service (`decide`, pure); a replica that
sees a new certificate in the Secret loads it for new connections. Rotating the CA
itself is manual: delete the Secret, then restart the agents once the ConfigMap shows
the new CA (docs/controller.md).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.objects import JSON
from aviator.kube.resources import CONFIGMAPS, SECRETS, Resource
from aviator.latency.tls import load_chain, server_context
from aviator.pki import DAY, Authority, not_after, server_names

log = logging.getLogger(__name__)

TLS_SECRET = "aviator-stream-tls"
CA_CONFIGMAP = "aviator-stream-ca"
RENEW_BEFORE = 30 * DAY
CHECK_EVERY_S = 3600.0


@dataclass(frozen=True, slots=True)
class Material:
    """What the Secret holds (PEM)."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes


def decide(held: Material | None, names: Sequence[str], now: datetime.datetime) -> str | None:
    """What to do with the Secret: "create" it, "renew" its serving certificate, or
    nothing (None)."""
    if held is None:
        return "create"
    try:
        expires = not_after(held.cert)
        covered = set(names) <= set(server_names(held.cert))
    except ValueError:
        return "renew"
    if expires - now < RENEW_BEFORE or not covered:
        return "renew"
    return None


def issue(names: Sequence[str], ca: Authority | None = None) -> Material:
    """A serving certificate for `names`, from `ca` (a new CA when None)."""
    ca = ca or Authority.new("aviator-stream-ca")
    issued = ca.issue(names[0], server_names=tuple(names))
    return Material(ca.cert_pem, ca.key_pem, issued.cert_pem, issued.key_pem)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _material(secret: JSON) -> Material | None:
    data = secret.get("data") or {}
    try:
        return Material(
            *(base64.b64decode(data[k]) for k in ("ca.crt", "ca.key", "tls.crt", "tls.key"))
        )
    except (KeyError, ValueError):
        return None


def _secret_body(name: str, namespace: str, m: Material) -> JSON:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "kubernetes.io/tls",
        "data": {
            "ca.crt": _b64(m.ca_cert),
            "ca.key": _b64(m.ca_key),
            "tls.crt": _b64(m.cert),
            "tls.key": _b64(m.key),
        },
    }


async def _get(client: KubeClient, res: Resource, name: str, namespace: str) -> JSON | None:
    try:
        return await client.get(res, name, namespace)
    except ApiError as exc:
        if exc.not_found:
            return None
        raise


async def ensure(
    client: KubeClient,
    namespace: str,
    names: Sequence[str],
    *,
    secret: str = TLS_SECRET,
    configmap: str = CA_CONFIGMAP,
) -> Material:
    """The stream's certificate, created or renewed in the Secret when due, and the CA
    published in the ConfigMap."""
    for _ in range(5):
        found = await _get(client, SECRETS, secret, namespace)
        held = _material(found) if found is not None else None
        action = decide(held, names, datetime.datetime.now(datetime.UTC))
        try:
            if found is None:
                held = issue(names)
                await client.create(SECRETS, _secret_body(secret, namespace, held), namespace)
                log.info("created the stream certificate in secret %s/%s", namespace, secret)
            elif action is not None:
                ca = Authority.from_pem(held.ca_cert, held.ca_key) if held else None
                held = issue(names, ca)
                body = _secret_body(secret, namespace, held)
                body["metadata"]["resourceVersion"] = found["metadata"]["resourceVersion"]
                await client.replace(SECRETS, body, namespace)
                log.info("renewed the stream certificate in secret %s/%s", namespace, secret)
        except ApiError as exc:
            if exc.conflict:
                continue  # another replica wrote it first: read theirs
            raise
        assert held is not None
        await _publish_ca(client, namespace, configmap, held.ca_cert)
        return held
    raise RuntimeError(f"secret {namespace}/{secret} keeps changing under us")


async def _publish_ca(client: KubeClient, namespace: str, name: str, ca_pem: bytes) -> None:
    body: JSON = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {"ca.crt": ca_pem.decode()},
    }
    for _ in range(5):
        found = await _get(client, CONFIGMAPS, name, namespace)
        try:
            if found is None:
                await client.create(CONFIGMAPS, body, namespace)
            elif (found.get("data") or {}).get("ca.crt") != ca_pem.decode():
                body["metadata"]["resourceVersion"] = found["metadata"]["resourceVersion"]
                await client.replace(CONFIGMAPS, body, namespace)
            return
        except ApiError as exc:
            if not exc.conflict:
                raise


class StreamCertificates:
    """The serving side of the stream's TLS for one replica: `await start()` once
    (creates or reads the Secret), then `run()` keeps the certificate fresh."""

    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        names: Sequence[str],
        *,
        secret: str = TLS_SECRET,
        configmap: str = CA_CONFIGMAP,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self.names = tuple(names)
        self._secret = secret
        self._configmap = configmap
        self.material: Material | None = None
        self.context: ssl.SSLContext | None = None

    async def start(self) -> ssl.SSLContext:
        self.material = await self._ensure()
        self.context = server_context(self.material.cert, self.material.key)
        return self.context

    async def _ensure(self) -> Material:
        return await ensure(
            self._client,
            self._namespace,
            self.names,
            secret=self._secret,
            configmap=self._configmap,
        )

    async def refresh(self) -> bool:
        """Look at the Secret again (renewing when due); True when the certificate
        changed (new connections get the new one)."""
        material = await self._ensure()
        if self.material is not None and material.cert == self.material.cert:
            return False
        self.material = material
        if self.context is not None:
            load_chain(self.context, material.cert, material.key)
        log.info("serving the stream with a new certificate")
        return True

    async def run(self, every_s: float = CHECK_EVERY_S) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.refresh()
