"""A real local Kubernetes control plane for tests, the box and benchmarks, and clients
that behave like real ones: a keep-alive HTTP/1.1 pool (pool.py), an h2c/gRPC-wire
client multiplexing many streams on one connection (h2client.py, timed by the
kernel's socket stamps: stamped.py) and a grpcio client (grpcclient.py); and the rules
kstatus (Flux, kpt, cli-utils) applies to custom resources (kstatus.py)."""
