"""Enforcement fixtures: a real policy service in process over mTLS that a test can stop and start
again on the same port, the mesh identities the tests need, and a throwaway identity provider."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mesh import Pki
from tests.support.policy_service import PolicyService, running_policy_service

# The `client` certificate stands for a workload allowed to call through the gateway.
GATEWAY_WORKLOADS = {"ZTMESH_GATEWAY_WORKLOADS": "spiffe://ztmesh.local/ns/ztmesh/sa/client"}


@pytest.fixture(scope="module")
def policy_service(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyService]:
    with running_policy_service(pki, tmp_path_factory.mktemp("policy"), GATEWAY_WORKLOADS) as service:
        yield service
