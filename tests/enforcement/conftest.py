"""Enforcement fixtures: a real policy service in process over mTLS that a test can stop and start
again on the same port, the mesh identities the tests need, and a throwaway identity provider."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mesh import Pki, settings_for
from tests.support.tokens import TokenIssuer
from ztmesh.mesh.server import MeshServer
from ztmesh.policy.app import build_app

REPO = Path(__file__).resolve().parents[2]
POLICY_ENV = {
    "ZTMESH_POLICY_DIR": str(REPO / "policies" / "rego"),
    "ZTMESH_TRUST_WEIGHTS": str(REPO / "policies" / "trust" / "weights.json"),
    "ZTMESH_THREAT_DIR": str(REPO / "policies" / "threat"),
    "ZTMESH_REGO_ENGINE": "embedded",
    "ZTMESH_DECISION_CACHE": "true",
}


@dataclasses.dataclass
class PolicyService:
    """The policy service (PolicyService + ext_authz Authorization on one mTLS port), in this process.
    `stop()` and `start()` again keep the port, as a restarted pod behind the same address would."""

    pki: Pki
    data_dir: Path
    port: int = 0
    server: MeshServer | None = None

    def start(self) -> None:
        assert self.server is None, "already running"
        settings = settings_for(self.pki, self.data_dir, port=self.port)
        server = MeshServer(build_app(settings), settings)
        server.start()
        self.server, self.port = server, server.port

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(grace=0.5)
            self.server = None

    @property
    def running(self) -> bool:
        return self.server is not None


@pytest.fixture(scope="module")
def policy_service(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PolicyService]:
    with pytest.MonkeyPatch.context() as env:
        for key, value in POLICY_ENV.items():
            env.setenv(key, value)
        env.delenv("ZTMESH_REDIS_URL", raising=False)
        service = PolicyService(pki, tmp_path_factory.mktemp("policy"))
        service.start()
        try:
            yield service
        finally:
            service.stop()


@pytest.fixture(scope="session")
def backend_identity(pki: Pki) -> str:
    """A mesh identity for the protected upstream (the gateway only talks mTLS to mesh workloads)."""
    if not (pki.directory / "backend.crt").exists():
        pki.issue("backend")
    return "backend"


@pytest.fixture(scope="session")
def idp() -> TokenIssuer:
    return TokenIssuer()
