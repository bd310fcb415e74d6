"""Policy enforcement for Python gRPC services: a typed client of the policy service (sync and
asyncio), a local client around an engine in this process, and server interceptors that ask either
before each RPC. Fail closed: no answer means DENY."""

from ztmesh.pep.client import (
    AccessRequest,
    AsyncDecider,
    AsyncLocalPolicyClient,
    AsyncPolicyClient,
    Decider,
    LocalPolicyClient,
    Outcome,
    PolicyClient,
    RetryPolicy,
    Verdict,
)
from ztmesh.pep.interceptor import AsyncPolicyInterceptor, Caller, PolicyInterceptor, Protect

__all__ = [
    "AccessRequest",
    "AsyncDecider",
    "AsyncLocalPolicyClient",
    "AsyncPolicyClient",
    "AsyncPolicyInterceptor",
    "Caller",
    "Decider",
    "LocalPolicyClient",
    "Outcome",
    "PolicyClient",
    "PolicyInterceptor",
    "Protect",
    "RetryPolicy",
    "Verdict",
]
