"""A real local Kubernetes control plane for tests, the box and benchmarks, and a
keep-alive pool client that behaves like real ones (pool.py)."""
