"""Wiring of the keys service into the shared server: its servicer, who may call which RPC, readiness.

Any mesh workload may reach the RPCs; which caller may use which key for what is decided per key by the core.
"""

from __future__ import annotations

from ztmesh._proto.keys.v1 import keys_pb2_grpc
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.spiffe import authorize_member_of, authorize_service_accounts

SERVICE = "ztmesh.keys.v1.KeyService"


def build_app(settings: MeshSettings) -> ServiceApp:
    members = authorize_member_of(settings.trust_domain)
    operators = authorize_service_accounts(settings.trust_domain, settings.namespace, settings.operators)
    rules = {f"/{SERVICE}/*": members}
    del operators
    # The implementation lands with the service's own issue; until then every RPC is UNIMPLEMENTED.
    servicer = keys_pb2_grpc.KeyServiceServicer()
    return ServiceApp(
        name="keys",
        register=lambda server: keys_pb2_grpc.add_KeyServiceServicer_to_server(servicer, server),
        service_names=(SERVICE,),
        rules=rules,
    )
