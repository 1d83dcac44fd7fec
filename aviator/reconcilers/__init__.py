"""The policy controller: AviatorPolicy → EndpointSlices, Services, status, Events.

Pure planning (no I/O): `slices` (EndpointSlices per family and resolved ports, minimal
writes), `services` (shadow Service, takeover and restore), `status` (conditions and
the steady-state zero-write rule), `mapping` (events → policy keys), `engine` (spec
parsing and the selection engine bridge). With I/O: `reconciler` (one policy
reconcile), `probe` (controller-side HTTP probes), `events` (Event recorder),
`metrics`, `app` (one controller replica) and `cmd` (`aviator controller`).
`harness` is the generic workqueue-driven controller loop.
"""
