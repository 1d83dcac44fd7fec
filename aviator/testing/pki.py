"""The certificates a local control plane needs: a CA, serving and client certs, SA keys."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from aviator.pki import Authority

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


class CertificateAuthority:
    """A throwaway CA that signs the control plane's serving and client certificates,
    written to `directory` (the signing itself is aviator.pki's)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ca = Authority.new("aviator-local-ca", validity=_VALIDITY)
        self.cert_path = directory / "ca.crt"
        self.cert_path.write_bytes(self._ca.cert_pem)

    def issue(
        self,
        name: str,
        common_name: str,
        *,
        organization: str | None = None,
        server_names: tuple[str, ...] = (),
        client: bool = False,
    ) -> KeyPair:
        issued = self._ca.issue(
            common_name,
            organization=organization,
            server_names=server_names,
            client=client,
            validity=_VALIDITY,
        )
        pair = KeyPair(self.directory / f"{name}.crt", self.directory / f"{name}.key")
        pair.cert.write_bytes(issued.cert_pem)
        pair.key.write_bytes(issued.key_pem)
        pair.key.chmod(0o600)
        return pair


def service_account_keys(directory: Path) -> KeyPair:
    """RSA key pair the API server signs and verifies ServiceAccount tokens with."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pair = KeyPair(directory / "sa.pub", directory / "sa.key")
    pair.cert.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    _write_key(key, pair.key)
    return pair
