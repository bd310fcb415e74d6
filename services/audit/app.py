"""Wiring of the audit service into the shared server: its servicer, who may call which RPC, readiness.

Only the emitting services may append; reading and verifying the trail is for operators and policy.
"""

from __future__ import annotations

from ztmesh._proto.audit.v1 import audit_pb2_grpc
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.spiffe import authorize_member_of, authorize_service_accounts

SERVICE = "ztmesh.audit.v1.AuditService"


def build_app(settings: MeshSettings) -> ServiceApp:
    members = authorize_member_of(settings.trust_domain)
    operators = authorize_service_accounts(settings.trust_domain, settings.namespace, settings.operators)
    emitters = authorize_service_accounts(settings.trust_domain, settings.namespace, ["policy", "plugins", "keys"])
    rules = {
        f"/{SERVICE}/Append": emitters,
        f"/{SERVICE}/Query": operators,
        f"/{SERVICE}/Verify": operators,
        f"/{SERVICE}/GetCheckpoint": members,
    }
    # The implementation lands with the service's own issue; until then every RPC is UNIMPLEMENTED.
    servicer = audit_pb2_grpc.AuditServiceServicer()
    return ServiceApp(
        name="audit",
        register=lambda server: audit_pb2_grpc.add_AuditServiceServicer_to_server(servicer, server),
        service_names=(SERVICE,),
        rules=rules,
    )
