"""Server interceptors that ask the policy service before each RPC (sync and asyncio servers).

Which RPC means which action on which kind of resource is a declarative table:

    rules = {"/clinic.v1.Records/Get": Protect("read", "patient_record", "patient_data")}

A DENY aborts with PERMISSION_DENIED, a CHALLENGE with UNAUTHENTICATED; both carry the decision id
(and the step-up for a challenge) in trailing metadata. Methods not in the table are refused unless
listed in `public`, so a new RPC is never silently unprotected.

Who the caller is comes from `subject_of(context)`: by default the SPIFFE ID of its mTLS certificate,
as a workload authenticated by mTLS (high assurance). A service whose callers carry an end user's
verified token passes its own function returning a `Caller` (roles, authentication, device posture).
The decision client is any `Decider` (sync) / `AsyncDecider` (aio): a `PolicyClient` over the
network or a `LocalPolicyClient` around an engine in this process.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ztmesh.mesh.tls import peer_spiffe_id
from ztmesh.pep.client import AccessRequest, AsyncDecider, Decider, Outcome, Verdict
from ztmesh.policy import headers

DECISION_ID_KEY = headers.DECISION_ID
STEP_UP_KEY = headers.STEP_UP
PURPOSE_KEYS = ("x-processing-purpose", "x-ztmesh-purpose")  # the caller's declared processing purpose


@dataclass(frozen=True)
class Protect:
    """How one RPC maps onto a decision request. `consented_purposes`: the purposes the data behind
    this RPC may be processed for (the pack refuses health data without a consented purpose)."""

    action: str
    resource_type: str
    classification: str
    purpose: str = ""
    consented_purposes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Caller:
    """Who is calling, as this service established it."""

    id: str
    roles: Sequence[str] = ()
    auth_method: str = ""
    assurance: str = ""  # low / medium / high, empty when unknown
    device: Mapping[str, Any] | None = None


def default_caller(context: Any) -> Caller:
    """The caller's SPIFFE ID from its verified mTLS certificate: a workload, strongly authenticated.
    No certificate is an empty subject, which the policy service refuses."""
    caller = peer_spiffe_id(context)
    if caller is None:
        return Caller("")
    return Caller(str(caller), roles=("workload",), auth_method="mtls", assurance="high")


def default_subject(context: Any) -> str:
    """The caller's SPIFFE ID from its mTLS certificate (empty when it has none)."""
    return default_caller(context).id


def _metadata(context: Any) -> dict[str, str]:
    return {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def peer_address(context: Any) -> str:
    """The caller's IP address from `context.peer()` (`ipv4:1.2.3.4:5`, `ipv6:[::1]:5`), or empty."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return ""


def build_request(rule: Protect, method: str, context: Any, subject_of: Callable[[Any], str | Caller]) -> AccessRequest:
    metadata = _metadata(context)
    caller = subject_of(context)
    if isinstance(caller, str):
        caller = Caller(caller)
    purpose = next((metadata[k] for k in PURPOSE_KEYS if metadata.get(k)), rule.purpose)
    return AccessRequest(
        subject_id=caller.id,
        roles=tuple(caller.roles),
        auth_method=caller.auth_method,
        assurance=caller.assurance,
        device=caller.device,
        action=rule.action,
        resource_type=rule.resource_type,
        classification=rule.classification,
        resource_id=method,
        purpose=purpose,
        consented_purposes=rule.consented_purposes,
        source_ip=peer_address(context),
        user_agent=metadata.get("user-agent", ""),
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


def _unprotected(method: str) -> Verdict:
    return Verdict.fail_closed(f"{method} has no enforcement rule")


class _Enforcement:
    """What both interceptors share: the method table and how a caller becomes a subject."""

    def __init__(
        self,
        rules: Mapping[str, Protect],
        public: Iterable[str] = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"),
        subject_of: Callable[[Any], str | Caller] = default_caller,
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

    def __init__(self, client: Decider, rules: Mapping[str, Protect], **options: Any) -> None:
        self._client = client
        self._enforcement = _Enforcement(rules, **options)

    def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._enforcement.public:
            return handler

        def check(behavior: Callable[..., Any], kind: str) -> Callable[..., Any]:
            def guarded(request: Any, context: grpc.ServicerContext) -> Any:
                try:
                    access = self._enforcement.request(method, context)
                    verdict = self._client.decide(access) if access is not None else _unprotected(method)
                except Exception as exc:  # fail closed: a broken enforcement step is a refusal
                    verdict = Verdict.fail_closed(f"enforcement error {type(exc).__name__}: {exc}")
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

    def __init__(self, client: AsyncDecider, rules: Mapping[str, Protect], **options: Any) -> None:
        self._client = client
        self._enforcement = _Enforcement(rules, **options)

    async def intercept_service(self, continuation: Any, handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method in self._enforcement.public:
            return handler

        def check(behavior: Callable[..., Any], kind: str) -> Callable[..., Any]:
            async def admit(context: grpc.aio.ServicerContext) -> None:
                try:
                    access = self._enforcement.request(method, context)
                    verdict = await self._client.decide(access) if access is not None else _unprotected(method)
                except Exception as exc:  # fail closed: a broken enforcement step is a refusal
                    verdict = Verdict.fail_closed(f"enforcement error {type(exc).__name__}: {exc}")
                if not verdict.allowed:
                    code, details, trailers = _refusal(verdict)
                    await context.abort(code, details, trailing_metadata=trailers)
                context.set_trailing_metadata(((DECISION_ID_KEY, verdict.decision_id),))

            if kind.endswith("_stream") and inspect.isasyncgenfunction(behavior):

                async def guarded_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                    await admit(context)
                    async for item in behavior(request, context):
                        yield item

                return guarded_stream

            # Unary responses, and streaming handlers written with `await context.write(...)`.
            async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
                await admit(context)
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result

            return guarded

        return _wrap(handler, check)
