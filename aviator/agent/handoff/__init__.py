"""Handing idle client connections off pods that left a policy's routed set."""
