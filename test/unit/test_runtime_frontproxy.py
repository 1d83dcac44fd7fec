"""Who a request from the API server's front proxy comes from
(aviator.runtime.frontproxy): the ConfigMap read, and headers believed only with the
proxy's verified certificate."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from aviator.runtime.frontproxy import FrontProxy, parse_config, peer_common_name, user_from
from aviator.runtime.httpauth import User

CA = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
DATA = {
    "client-ca-file": CA,
    "requestheader-client-ca-file": CA,
    "requestheader-allowed-names": json.dumps(["front-proxy-client"]),
    "requestheader-username-headers": json.dumps(["X-Remote-User"]),
    "requestheader-group-headers": json.dumps(["X-Remote-Group"]),
    "requestheader-extra-headers-prefix": json.dumps(["X-Remote-Extra-"]),
}


def test_the_api_servers_configmap() -> None:
    proxy = parse_config(DATA)
    assert proxy == FrontProxy(CA.encode(), frozenset({"front-proxy-client"}))
    assert parse_config({"client-ca-file": CA}) is None  # no aggregation layer
    assert parse_config({**DATA, "requestheader-allowed-names": "not json"}) == FrontProxy(
        CA.encode()
    )


def test_the_user_the_proxy_names() -> None:
    proxy = FrontProxy(CA.encode(), frozenset({"front-proxy-client"}))
    headers = CIMultiDict(
        [
            ("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler"),
            ("X-Remote-Group", "system:serviceaccounts"),
            ("X-Remote-Group", "system:authenticated"),
            ("X-Remote-Extra-Authentication.Kubernetes.Io%2fpod-Name", "hpa-0"),
        ]
    )
    assert user_from(proxy, "front-proxy-client", headers) == User(
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        "",
        ("system:serviceaccounts", "system:authenticated"),
        {"authentication.kubernetes.io/pod-name": ("hpa-0",)},
    )
    # Without the proxy's certificate, or with another name on it: nobody.
    assert user_from(proxy, None, headers) is None
    assert user_from(proxy, "someone", headers) is None
    # An empty allow-list takes any certificate the CA signed; no user header: nobody.
    assert user_from(FrontProxy(CA.encode()), "anyone", headers) is not None
    assert user_from(proxy, "front-proxy-client", CIMultiDict()) is None


@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=8))
def test_headers_never_name_a_user_without_the_certificate(pairs: list[tuple[str, str]]) -> None:
    headers = CIMultiDict([(k, v) for k, v in pairs if k.isascii() and k.isprintable()])
    headers.add("X-Remote-User", "admin")
    assert user_from(FrontProxy(CA.encode(), frozenset({"p"})), None, headers) is None


def test_the_common_name_of_a_verified_certificate() -> None:
    cert = {"subject": ((("organizationName", "x"),), (("commonName", "front-proxy-client"),))}
    assert peer_common_name(cert) == "front-proxy-client"
    assert peer_common_name(None) is None and peer_common_name({}) is None
