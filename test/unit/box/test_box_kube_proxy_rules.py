"""What kube-proxy's nftables rules spread each Service over, read from `nft -j list
ruleset` (the box reports it; benchmarks through kube-proxy wait on it)."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aviator.box.kubeproxy import backends_in_ruleset

SERVICE = "service-XYZ12345-ns1/web/tcp/http"


def endpoint(ip: str) -> str:
    return f"endpoint-{ip.replace('.', '')[:8]:0>8}-ns1/web/tcp/http__{ip}/8080"


def rule(chain: str, expr: list[Any], table: str = "kube-proxy") -> dict[str, Any]:
    return {"rule": {"family": "ip", "table": table, "chain": chain, "expr": expr}}


def pick(*ips: str) -> list[Any]:
    """A Service port chain's endpoint choice, as nft prints kube-proxy's."""
    elements = [[i, {"goto": {"target": endpoint(ip)}}] for i, ip in enumerate(ips)]
    key = {"numgen": {"mode": "random", "mod": len(ips), "offset": 0}}
    return [{"vmap": {"key": key, "data": {"set": elements}}}]


# The masquerade rule every Service port chain starts with (from nft's own output).
MASQUERADE = [
    {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "ip", "field": "daddr"}},
            "right": "10.96.0.10",
        }
    },
    {
        "match": {
            "op": "==",
            "left": {"payload": {"protocol": "tcp", "field": "dport"}},
            "right": 80,
        }
    },
    {"jump": {"target": "mark-for-masquerade"}},
]


def test_counts_the_endpoints_of_each_service_port() -> None:
    ruleset = {
        "nftables": [
            {"metainfo": {"version": "1.1.3", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}},
            rule(endpoint("10.244.1.5"), [{"dnat": {"addr": "10.244.1.5", "port": 8080}}]),
            rule(SERVICE, MASQUERADE),
            rule(SERVICE, pick("10.244.1.5", "10.244.1.6")),
            rule("service-ABCD1234-ns1/web/tcp/metrics", pick("10.244.1.5")),
            rule("service-QQQQ1111-ns2/db/tcp/", [{"goto": {"target": endpoint("10.244.2.9")}}]),
            rule("service-NONE0000-ns2/empty/tcp/http", MASQUERADE),  # no endpoints
            rule(SERVICE, pick("10.9.9.9"), table="another-table"),
        ]
    }
    assert backends_in_ruleset(ruleset) == {
        "ns1/web": {"tcp/http": 2, "tcp/metrics": 1},
        "ns2/db": {"tcp/": 1},
    }


def test_no_rules_no_backends() -> None:
    assert backends_in_ruleset({}) == {}
    assert backends_in_ruleset({"nftables": []}) == {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


chains = st.sampled_from(
    [SERVICE, "service-X-ns/a/tcp/p", "service-", "other", endpoint("1.2.3.4")]
)
rules = st.builds(rule, chains, st.lists(json_values, max_size=4)) | st.builds(
    lambda chain, expr: {"rule": {"table": "kube-proxy", "chain": chain, "expr": expr}},
    chains,
    json_values,
)


@given(st.lists(json_values | rules, max_size=6))
def test_any_json_reads_without_error(items: list[Any]) -> None:
    got = backends_in_ruleset({"nftables": items})
    assert all(n > 0 for ports in got.values() for n in ports.values())
