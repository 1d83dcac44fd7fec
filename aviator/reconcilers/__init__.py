"""The AviatorPolicy reconciler: AviatorPolicy → EndpointSlices, Services, status, Events.

One reconcile reads (`view`, `latencies`), plans (`plan`, pure) and acts
(`reconciler`); ARCHITECTURE.md walks through it. Pure helpers the plan uses: `routing`
(conflicts, shadow, takeover, restore, release), `services` (shadow Service and
takeover patches), `slices` (EndpointSlices per family and resolved ports, minimal
writes), `status` (conditions and the steady-state zero-write rule), `evaluation` (spec
parsing and the selection engine bridge), `reporting` (Events and per-pod status rows). Also: `mapping` (events → policy keys),
`podindex` (pods by label), `metrics` (per-policy gauges).
"""
