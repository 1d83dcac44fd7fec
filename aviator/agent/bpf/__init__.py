"""Kernel-side request latency: the BPF program's loader and map reader."""

from aviator.agent.bpf.model import BpfUnavailable, EndpointCounters, EndpointKey
from aviator.agent.bpf.source import BpfLatencySource

__all__ = ["BpfLatencySource", "BpfUnavailable", "EndpointCounters", "EndpointKey"]
