"""The mesh's fixed shape: its four services, their ports and how they find each other (DESIGN.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceInfo:
    name: str
    grpc_service: str
    port: int
    metrics_port: int
    health_port: int


SERVICES: dict[str, ServiceInfo] = {
    s.name: s
    for s in (
        ServiceInfo("policy", "ztmesh.policy.v1.PolicyService", 50051, 9101, 9111),
        ServiceInfo("plugins", "ztmesh.plugins.v1.PluginService", 50052, 9102, 9112),
        ServiceInfo("keys", "ztmesh.keys.v1.KeyService", 50053, 9103, 9113),
        ServiceInfo("audit", "ztmesh.audit.v1.AuditService", 50054, 9104, 9114),
    )
}
# Start order for `ztmesh up`: audit signs with keys, policy calls the other three.
START_ORDER = ("keys", "audit", "plugins", "policy")
# Certificates `ztmesh certs init` issues besides the services'.
EXTRA_IDENTITIES = ("envoy", "client")


def service_info(name: str) -> ServiceInfo:
    try:
        return SERVICES[name]
    except KeyError:
        raise ValueError(f"unknown service {name!r}; expected one of {', '.join(SERVICES)}") from None
