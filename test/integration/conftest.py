"""Fixtures of the integration tests. The control plane, `kube` and `namespace` come
from test/conftest.py; helpers that are not fixtures are in integration_support.py."""

from __future__ import annotations

import pytest
from integration_support import install_crd

from aviator.testing.controlplane import ControlPlane


@pytest.fixture(scope="session")
def crd(control_plane: ControlPlane) -> None:
    """The AviatorPolicy CRD as the API package builds it, installed once per session.
    test_crd.py overrides this with the committed YAML, which it is about."""
    install_crd(control_plane)
