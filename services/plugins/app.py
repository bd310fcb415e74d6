"""Wiring of the plugins service into the shared server: its servicer, who may call which RPC, readiness.

Policy (and operators) execute plugins; only operators register or remove them.
"""

from __future__ import annotations

from ztmesh._proto.plugins.v1 import plugins_pb2_grpc
from ztmesh.mesh.config import MeshSettings
from ztmesh.mesh.server import ServiceApp
from ztmesh.mesh.spiffe import authorize_member_of, authorize_service_accounts

SERVICE = "ztmesh.plugins.v1.PluginService"


def build_app(settings: MeshSettings) -> ServiceApp:
    members = authorize_member_of(settings.trust_domain)
    operators = authorize_service_accounts(settings.trust_domain, settings.namespace, settings.operators)
    executors = authorize_service_accounts(settings.trust_domain, settings.namespace, ["policy", *settings.operators])
    rules = {
        f"/{SERVICE}/Execute": executors,
        f"/{SERVICE}/ListPlugins": members,
        f"/{SERVICE}/RegisterPlugin": operators,
        f"/{SERVICE}/UnregisterPlugin": operators,
    }
    # The implementation lands with the service's own issue; until then every RPC is UNIMPLEMENTED.
    servicer = plugins_pb2_grpc.PluginServiceServicer()
    return ServiceApp(
        name="plugins",
        register=lambda server: plugins_pb2_grpc.add_PluginServiceServicer_to_server(servicer, server),
        service_names=(SERVICE,),
        rules=rules,
    )
