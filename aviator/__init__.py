"""Aviator: latency-aware, eBPF-powered traffic management for Kubernetes."""

__version__ = "0.1.0"
