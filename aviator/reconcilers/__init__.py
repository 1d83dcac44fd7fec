"""The AviatorPolicy reconciler: AviatorPolicy → EndpointSlices, Services, status, Events.

One reconcile reads (`view`, `latencies`), plans (`plan`, pure) and acts
(`reconciler`); ARCHITECTURE.md walks through it. Pure helpers the plan uses:
`routing` (conflicts, shadow, takeover, restore, release), `takeover` (where a takeover
stands and its record in the status), `services` (shadow Service and takeover patches),
`endpoints` and `hints` (what each endpoint says, as kube-controller-manager writes
it), `slices` (EndpointSlices per family and resolved ports, minimal writes), `status`
(conditions and the steady-state zero-write rule), `reporting` (Events and per-pod
status rows), `handoff` (which pods hand their connections off), `evaluation` (spec
parsing and the selection engine bridge). Also: `mapping` (events → policy keys),
`podindex` (pods by label), `metrics` (per-policy gauges).
"""
