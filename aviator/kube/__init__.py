"""A thin asyncio Kubernetes REST client working on raw JSON (no typed models)."""

from aviator.kube.client import ApiError, KubeClient
from aviator.kube.resources import Resource

__all__ = ["ApiError", "KubeClient", "Resource"]
