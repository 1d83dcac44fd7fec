"""The controller process: flags, wiring of informers, latency store, agent stream,
leader election and the policy reconciler, and its metrics."""
