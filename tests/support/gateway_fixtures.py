"""Fixtures for tests through the real Envoy gateway (a plugin of the root conftest): a throwaway
identity provider, the protected upstream's mesh identity, the recording upstream, the policy service
the gateway asks (default settings) and the gateway itself. A test module or conftest that tests other
policy settings (e.g. which workloads may call through the gateway) defines its own `policy_service`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.gateway import Gateway, run_gateway, trust_token_keys
from tests.support.mesh import Pki
from tests.support.policy_service import PolicyService, running_policy_service
from tests.support.tokens import TokenIssuer
from tests.support.upstream import Upstream, run_upstream


@pytest.fixture(scope="session")
def idp() -> TokenIssuer:
    return TokenIssuer()


@pytest.fixture(scope="session")
def backend_identity(pki: Pki) -> str:
    """A mesh identity for the protected upstream (the gateway only talks mTLS to mesh workloads)."""
    if not (pki.directory / "backend.crt").exists():
        pki.issue("backend")
    return "backend"


@pytest.fixture(scope="module")
def upstream(pki: Pki, backend_identity: str) -> Iterator[Upstream]:
    with run_upstream(pki.files(backend_identity)) as server:
        yield server


@pytest.fixture(scope="module")
def policy_service(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyService]:
    with running_policy_service(pki, tmp_path_factory.mktemp("policy")) as service:
        yield service


@pytest.fixture(scope="module")
def gateway(
    envoy_bin: Path,
    tmp_path_factory: pytest.TempPathFactory,
    pki: Pki,
    policy_service: PolicyService,
    upstream: Upstream,
    idp: TokenIssuer,
) -> Iterator[Gateway]:
    with run_gateway(
        str(envoy_bin), tmp_path_factory.mktemp("gateway"), pki.directory, policy_port=policy_service.port,
        upstream_port=upstream.port, edit=trust_token_keys(idp.jwks()),
    ) as gw:  # fmt: skip
        yield gw
