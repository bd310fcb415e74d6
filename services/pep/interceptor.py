"""Server interceptors that ask the policy service before each RPC (sync and asyncio servers).

Which RPC means which action on which kind of resource is a declarative table:

    rules = {"/clinic.v1.Records/Get": Protect("read", "patient_record", "patient_data")}

A DENY aborts with PERMISSION_DENIED, a CHALLENGE with UNAUTHENTICATED; both carry the decision id
(and the step-up for a challenge) in trailing metadata. Methods not in the table are refused unless
listed in `public`, so a new RPC is never silently unprotected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

from ztmesh.mesh.tls import peer_spiffe_id
from ztmesh.pep.client import AccessRequest, AsyncPolicyClient, Outcome, PolicyClient, Verdict

DECISION_ID_KEY = "x-ztmesh-decision-id"
STEP_UP_KEY = "x-ztmesh-step-up"


@dataclass(frozen=True)
class Protect:
    """How one RPC maps onto a decision request."""

    action: str
    resource_type: str
    classification: str
    purpose: str = ""


def default_subject(context: grpc.ServicerContext) -> str:
    """The caller's SPIFFE ID from its mTLS certificate (empty when it has none)."""
    caller = peer_spiffe_id(context)
    return str(caller) if caller else ""


def _metadata(context: Any) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def build_request(rule: Protect, method: str, context: Any, subject_of: Callable[[Any], str]) -> AccessRequest:
    metadata = _metadata(context)
    return AccessRequest(
        subject_id=subject_of(context),
        action=rule.action,
        resource_type=rule.resource_type,
        classification=rule.classification,
        resource_id=method,
        purpose=metadata.get("x-ztmesh-purpose", rule.purpose),
        request_id=metadata.get("x-request-id", ""),
        attributes={"grpc_method": method},
    )


def _refusal(verdict: Verdict) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
    trailers: tuple[tuple[str, str], ...] = ((DECISION_ID_KEY, verdict.decision_id),)
    reason = "; ".join(verdict.reasons) or "denied by policy"
    if verdict.outcome is Outcome.CHALLENGE:
        trailers += ((STEP_UP_KEY, ",".join(verdict.step_up)),)
        return grpc.StatusCode.UNAUTHENTICATED, f"step-up required ({','.join(verdict.step_up)}): {reason}", trailers
    return grpc.StatusCode.PERMISSION_DENIED, f"denied (decision {verdict.decision_id or 'local'}): {reason}", trailers


class _Enforcement:
    """What both interceptors share: the method table and how a caller becomes a subject."""

    def __init__(
        self,
        rules: Mapping[str, Protect],
        public: Iterable[str] = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"),
        subject_of: Callable[[Any], str] = default_subject,
    ) -> None:
        self.rules = dict(rules)
        self.public = frozenset(public)
        self.subject_of = subject_of

    def request(self, method: str, context: Any) -> AccessRequest | None:
        """The decision request for this call, or None when the method has no rule (refused)."""
        rule = self.rules.get(method)
        return None if rule is None else build_request(rule, method, context, self.subject_of)


def _wrap(handler: grpc.RpcMethodHandler, check: Callable[..., Any]) -> grpc.RpcMethodHandler:
    kind = next(k for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream") if getattr(handler, k))
    behavior = getattr(handler, kind)
    return handler._replace(**{kind: check(behavior, kind)})


class PolicyInterceptor(grpc.ServerInterceptor):
    """For `grpc.server(...)` (thread-pool servers)."""

    def __init__(self, client: PolicyClient, rules: Mapping[str, Protect], **options: Any) -> None:
        self._client = client
        self._enforcement = _Enforcement(rules, **options)

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._enforcement.public:
            return handler

        def check(behavior: Callable[..., Any], kind: str) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                access = self._enforcement.request(method, context)
                if access is None:
                    context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} has no enforcement rule")
                verdict = self._client.decide(access)
                if not verdict.allowed:
                    code, details, trailers = _refusal(verdict)
                    context.set_trailing_metadata(trailers)
                    context.abort(code, details)
                context.set_trailing_metadata(((DECISION_ID_KEY, verdict.decision_id),))
                return behavior(request, context)

            return guarded

        return _wrap(handler, check)


class AsyncPolicyInterceptor(grpc.aio.ServerInterceptor):
    """For `grpc.aio.server(...)`; unary-response handlers only need the check once per call."""

    def __init__(self, client: AsyncPolicyClient, rules: Mapping[str, Protect], **options: Any) -> None:
        self._client = client
        self._enforcement = _Enforcement(rules, **options)

    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._enforcement.public:
            return handler

        def check(behavior: Callable[..., Any], kind: str) -> Callable[..., Any]:
            async def admit(context: grpc.aio.ServicerContext) -> None:
                access = self._enforcement.request(method, context)
                if access is None:
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{method} has no enforcement rule")
                    return
                verdict = await self._client.decide(access)
                if not verdict.allowed:
                    code, details, trailers = _refusal(verdict)
                    context.set_trailing_metadata(trailers)
                    await context.abort(code, details)
                context.set_trailing_metadata(((DECISION_ID_KEY, verdict.decision_id),))

            if kind.endswith("_stream"):

                async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    await admit(context)
                    async for item in behavior(request, context):
                        yield item

                return guarded_stream

            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(context)
                return await behavior(request, context)

            return guarded

        return _wrap(handler, check)
