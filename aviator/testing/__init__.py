"""A real local Kubernetes control plane for tests, the box and benchmarks."""
