"""When the controller creates or renews the stream certificate (pure), and that what
it issues is what agents can check."""

from __future__ import annotations

import datetime
import ssl

from aviator.controller.certs import Material, decide, issue
from aviator.latency.tls import client_context, server_context, service_names
from aviator.pki import DAY, Authority, not_after, server_names

NAMES = service_names("aviator-controller-stream", "aviator-system")
NOW = datetime.datetime.now(datetime.UTC)


def test_decide() -> None:
    assert decide(None, NAMES, NOW) == "create"
    fresh = issue(NAMES)
    assert decide(fresh, NAMES, NOW) is None
    assert decide(fresh, NAMES, NOW + 340 * DAY) == "renew"  # within 30 days of expiry
    assert decide(fresh, (*NAMES, "another.example"), NOW) == "renew"  # a name is missing
    broken = Material(fresh.ca_cert, fresh.ca_key, b"not a certificate", fresh.key)
    assert decide(broken, NAMES, NOW) == "renew"


def test_what_is_issued() -> None:
    m = issue(NAMES)
    assert server_names(m.cert) == list(NAMES)
    assert not_after(m.cert) - NOW > 360 * DAY
    ca = Authority.from_pem(m.ca_cert, m.ca_key)
    renewed = issue(NAMES, ca)
    assert renewed.ca_cert == m.ca_cert and renewed.cert != m.cert
    # Both ends build their contexts from it.
    assert isinstance(server_context(m.cert, m.key), ssl.SSLContext)
    client = client_context(m.ca_cert)
    assert client.check_hostname and client.verify_mode == ssl.CERT_REQUIRED
    assert client.minimum_version >= ssl.TLSVersion.TLSv1_2
