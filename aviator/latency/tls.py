"""TLS of the agent → controller stream: the SSL contexts of both ends (pure, no I/O
beyond a private temporary file the ssl module insists on).

The controller serves the stream with a certificate signed by its own CA (kept in a
Secret, aviator/controller/certs.py), valid for the names of the stream Service
(`service_names`). Agents trust that CA only (a ConfigMap holds its certificate),
verify the certificate against the Service's name (`server_name`) whatever address
they dial (the replicas' pod IPs), and so never send their token to anyone else nor
in clear. TLS 1.2 at least. The same listener serves the external metrics API, whose
requests come from the API server's front proxy with a client certificate
(`trust_clients`).
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile

STREAM_SERVICE = "aviator-controller-stream"


def service_names(service: str, namespace: str) -> tuple[str, ...]:
    """The DNS names of a Service, shortest first."""
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    )


def server_name(service: str, namespace: str) -> str:
    """The name agents verify the controller's certificate against."""
    return f"{service}.{namespace}.svc"


def load_chain(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """Load (or replace: new handshakes use it) the serving certificate of `ctx`."""
    # The ssl module reads certificates from files only: a private directory, gone
    # right after.
    with tempfile.TemporaryDirectory(prefix="aviator-tls-") as folder:
        cert, key = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        with open(cert, "wb") as out:
            out.write(cert_pem)
        try:
            ctx.load_cert_chain(cert, key)
        finally:
            with contextlib.suppress(OSError):
                os.remove(key)


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """The controller's side: serves `cert_pem`, asks for no client certificate (agents
    authenticate with their token, inside the TLS session). It trusts no CA at all (not
    the system's): only `trust_clients` adds one."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    load_chain(ctx, cert_pem, key_pem)
    return ctx


def trust_clients(ctx: ssl.SSLContext, ca_pem: bytes) -> None:
    """Let a server context verify client certificates signed by `ca_pem` (the API
    server's front proxy, aviator.runtime.frontproxy): asked for, optional (agents and
    scrapers present none), refused in the handshake when presented but not signed by a
    CA given here. Adds to the CAs given before."""
    ctx.load_verify_locations(cadata=ca_pem.decode())
    ctx.verify_mode = ssl.CERT_OPTIONAL


def client_context(ca_pem: bytes) -> ssl.SSLContext:
    """The agent's side: trusts `ca_pem` only, checks the server's name."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem.decode())
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
