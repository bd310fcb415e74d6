"""Wiring of the policy service into the shared server: its servicer, who may call which RPC, readiness.

Any mesh workload may ask for decisions and report signals; reloading policy is for operators;
Envoy calls ext_authz Check.
"""

from __future__ import annotations

from ztmesh._proto.policy.v1 import policy_pb2_grpc
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.spiffe import authorize_member_of, authorize_service_accounts

SERVICE = "ztmesh.policy.v1.PolicyService"


def build_app(settings: MeshSettings) -> ServiceApp:
    members = authorize_member_of(settings.trust_domain)
    operators = authorize_service_accounts(settings.trust_domain, settings.namespace, settings.operators)
    rules = {
        f"/{SERVICE}/Decide": members,
        f"/{SERVICE}/DecideBatch": members,
        f"/{SERVICE}/ReportSignal": members,
        f"/{SERVICE}/GetPolicyInfo": members,
        f"/{SERVICE}/ReloadPolicy": operators,
    }
    # The implementation lands with the service's own issue; until then every RPC is UNIMPLEMENTED.
    servicer = policy_pb2_grpc.PolicyServiceServicer()
    return ServiceApp(
        name="policy",
        register=lambda server: policy_pb2_grpc.add_PolicyServiceServicer_to_server(servicer, server),
        service_names=(SERVICE,),
        rules=rules,
    )
