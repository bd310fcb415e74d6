"""All four services in the test process over real mTLS (audit on SQLite, keys, plugins, policy on the
shipped pack), each emitter shipping to that audit service, and a reader of the audit trail it keeps.
(Certificates presenting chosen URI SANs: `Pki.issue_presenting` in tests/support/mesh.py.)"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests.support.mesh import Pki, running, settings_for
from ztmesh._proto.audit.v1 import audit_pb2, audit_pb2_grpc
from ztmesh._proto.keys.v1 import keys_pb2_grpc
from ztmesh._proto.plugins.v1 import plugins_pb2_grpc
from ztmesh._proto.policy.v1 import policy_pb2_grpc
from ztmesh.audit.app import build_app as build_audit_app
from ztmesh.keys.app import build_app as build_keys_app
from ztmesh.mesh.server import MeshServer, ServiceApp
from ztmesh.plugins.app import build_app as build_plugins_app
from ztmesh.policy.app import build_app as build_policy_app

REPO = Path(__file__).resolve().parents[2]
SERVICE_ENV = {
    "ZTMESH_POLICY_DIR": str(REPO / "policies" / "rego"),
    "ZTMESH_TRUST_WEIGHTS": str(REPO / "policies" / "trust" / "weights.json"),
    "ZTMESH_THREAT_DIR": str(REPO / "policies" / "threat"),
    "ZTMESH_REGO_ENGINE": "embedded",
    "ZTMESH_KEK": "A" * 43 + "=",
    # Unsigned modules, so edge tests can register one; signatures are tested in tests/plugins.
    "ZTMESH_PLUGIN_SIGNING_REQUIRED": "false",
}
STUBS: dict[str, Any] = {
    "audit": audit_pb2_grpc.AuditServiceStub,
    "keys": keys_pb2_grpc.KeyServiceStub,
    "plugins": plugins_pb2_grpc.PluginServiceStub,
    "policy": policy_pb2_grpc.PolicyServiceStub,
}
BUILDERS = {"keys": build_keys_app, "plugins": build_plugins_app, "policy": build_policy_app}


@contextlib.contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """ZTMESH_* settings for the apps built inside (they read the environment when built)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class ServiceMesh:
    pki: Pki
    servers: dict[str, MeshServer] = field(default_factory=dict)

    def stub(self, service: str, identity: str = "client") -> Any:
        return STUBS[service](self.pki.channel(identity, self.servers[service].port))

    def records(self, **filters: Any) -> list[audit_pb2.AuditRecord]:
        """Audit records matching the QueryRequest `filters`, oldest first (read as an operator)."""
        request = audit_pb2.QueryRequest(order=audit_pb2.ORDER_OLDEST_FIRST, **filters)
        return [record for page in self.stub("audit").Query(request, timeout=10) for record in page.records]

    def wait_for_records(self, count: int = 1, timeout: float = 10.0, **filters: Any) -> list[audit_pb2.AuditRecord]:
        """At least `count` matching records, once the emitters' spools have shipped them."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.records(**filters)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def build(
    service: str, pki: Pki, data_dir: Path, *, env: Mapping[str, str] | None = None, **mesh: Any
) -> tuple[ServiceApp, Any]:
    """One emitting service's app and settings; `env` on top of SERVICE_ENV, `mesh` MeshSettings overrides."""
    settings = settings_for(pki, data_dir / service, **mesh)
    with environment({**SERVICE_ENV, **(env or {})}):
        return BUILDERS[service](settings), settings


@contextlib.contextmanager
def service_mesh(pki: Pki, data_dir: Path, env: Mapping[str, str] | None = None) -> Iterator[ServiceMesh]:
    """Audit first, then keys, plugins (verifying with keys) and policy, each shipping to audit; `env`
    on top of SERVICE_ENV for the three emitters."""
    mesh = ServiceMesh(pki)
    with contextlib.ExitStack() as stack:
        audit_settings = settings_for(pki, data_dir / "audit")
        mesh.servers["audit"] = stack.enter_context(running(build_audit_app(audit_settings), audit_settings))
        peers: dict[str, Any] = {"audit_addr": f"localhost:{mesh.servers['audit'].port}"}
        for service in ("keys", "plugins", "policy"):
            app, settings = build(service, pki, data_dir, env=env, **peers)
            mesh.servers[service] = stack.enter_context(running(app, settings))
            peers[f"{service}_addr"] = f"localhost:{mesh.servers[service].port}"
        yield mesh


def status_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status an RPC answered (OK and "" when it succeeded); `call` is a zero-argument callable."""
    try:
        call()
    except grpc.RpcError as err:
        return err.code(), err.details() or ""  # type: ignore[attr-defined]
    return grpc.StatusCode.OK, ""
