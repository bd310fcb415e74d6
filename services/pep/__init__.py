"""Policy enforcement for Python gRPC services: a typed client of the policy service (sync and
asyncio) and server interceptors that ask it before each RPC. Fail closed: no answer means DENY."""

from ztmesh.pep.client import AccessRequest, AsyncPolicyClient, PolicyClient, Verdict
from ztmesh.pep.interceptor import AsyncPolicyInterceptor, PolicyInterceptor, Protect

__all__ = [
    "AccessRequest",
    "AsyncPolicyClient",
    "AsyncPolicyInterceptor",
    "PolicyClient",
    "PolicyInterceptor",
    "Protect",
    "Verdict",
]
