"""A policy service and the real audit service it ships its records to, both in process over mTLS,
with the policy settings a test gives as environment values; and a reader of the audit trail."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.mesh import Pki, running, settings_for
from tests.support.service_mesh import environment
from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
from ztmesh.audit.app import build_app as build_audit_app
from ztmesh.mesh.server import MeshServer
from ztmesh.policy.app import build_app as build_policy_app

REPO = Path(__file__).resolve().parents[2]
POLICY_FILES = {
    "ZTMESH_POLICY_DIR": str(REPO / "policies" / "rego"),
    "ZTMESH_TRUST_WEIGHTS": str(REPO / "policies" / "trust" / "weights.json"),
    "ZTMESH_THREAT_DIR": str(REPO / "policies" / "threat"),
}


@dataclass
class AuditedPolicy:
    pki: Pki
    policy: MeshServer
    audit: MeshServer

    def records(self, **filters: Any) -> list[Any]:
        """Audit records matching the QueryRequest `filters`, oldest first (read as the operator)."""
        stub = audit_pb2_grpc.AuditServiceStub(self.pki.channel("client", self.audit.port))
        request = audit_pb2.QueryRequest(order=audit_pb2.ORDER_OLDEST_FIRST, **filters)
        return [record for page in stub.Query(request, timeout=10) for record in page.records]

    def wait_for_records(self, count: int, timeout: float = 10.0, **filters: Any) -> list[Any]:
        """At least `count` matching records, once the policy's spool has shipped them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.records(**filters)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def details(record: Any) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(record.event.details_json)
    return parsed


@contextlib.contextmanager
def audited_policy(pki: Pki, data_dir: Path, policy_env: Mapping[str, str], **mesh: Any) -> Iterator[AuditedPolicy]:
    """Audit, then policy pointed at it; `policy_env` are the policy's ZTMESH_* settings, `mesh` its
    MeshSettings overrides (e.g. redis_url)."""
    audit_settings = settings_for(pki, data_dir / "audit")
    with running(build_audit_app(audit_settings), audit_settings) as audit:
        # Dev mode: the shipped pack is not signed, and bundle signing is not what these tests are about.
        options = {"audit_addr": f"localhost:{audit.port}", "dev_mode": True, **mesh}
        settings = settings_for(pki, data_dir / "policy", **options)
        with environment({**POLICY_FILES, "ZTMESH_REGO_ENGINE": "embedded", **policy_env}):
            app = build_policy_app(settings)
        with running(app, settings) as policy:
            yield AuditedPolicy(pki, policy, audit)
