"""The server interceptor every service runs: request id, SPIFFE authorization, metrics, access log.

Authorization is an allow-list per full method name (`/pkg.Service/Method`, or `/pkg.Service/*`);
a method with no rule is refused, so a new RPC is closed until someone decides who may call it.
It also holds the edge's last line (ztmesh.mesh.edge): a malformed peer identity is UNAUTHENTICATED,
undecodable request bytes INVALID_ARGUMENT, and an error no servicer mapped INTERNAL, logged once.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import grpc

from ztmesh.mesh.edge import Undecodable, caller_var, current_caller, lenient_deserializer
from ztmesh.mesh.errors import PeerIdentityError
from ztmesh.mesh.log import request_id_var
from ztmesh.mesh.metrics import LATENCY, REQUESTS
from ztmesh.mesh.spiffe import Authorizer
from ztmesh.mesh.tls import peer_identity

__all__ = ["MeshInterceptor", "MethodRules", "current_caller"]
log = logging.getLogger("ztmesh.access")


class MethodRules:
    """Who may call what: full method name (or `/pkg.Service/*`) -> authorizer."""

    def __init__(self, rules: Mapping[str, Authorizer]) -> None:
        self._rules = dict(rules)

    def authorizer(self, method: str) -> Authorizer | None:
        rule = self._rules.get(method)
        if rule is None:
            rule = self._rules.get(method.rsplit("/", 1)[0] + "/*")
        return rule


class MeshInterceptor(grpc.ServerInterceptor):
    def __init__(self, service: str, rules: MethodRules) -> None:
        self.service = service
        self.rules = rules

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        metadata = dict(handler_call_details.invocation_metadata or ())
        incoming_request_id = str(metadata.get("x-request-id", ""))[:128]
        authorizer = self.rules.authorizer(method)
        if handler.unary_unary:
            return handler._replace(
                unary_unary=self._wrap_unary(handler.unary_unary, method, incoming_request_id, authorizer),
                request_deserializer=_lenient(handler.request_deserializer),
            )
        if handler.unary_stream:
            return handler._replace(
                unary_stream=self._wrap_stream(handler.unary_stream, method, incoming_request_id, authorizer),
                request_deserializer=_lenient(handler.request_deserializer),
            )
        if handler.stream_unary:
            return handler._replace(
                stream_unary=self._wrap_unary(handler.stream_unary, method, incoming_request_id, authorizer)
            )
        return handler._replace(
            stream_stream=self._wrap_stream(handler.stream_stream, method, incoming_request_id, authorizer)
        )

    def _admit(
        self,
        request: Any,
        context: grpc.ServicerContext,
        method: str,
        request_id: str,
        authorizer: Authorizer | None,
    ) -> None:
        request_id_var.set(request_id or uuid.uuid4().hex)
        caller_var.set(None)  # the worker thread's previous call must not lend this one its caller
        try:
            caller = peer_identity(context)
        except PeerIdentityError as exc:  # logged once per certificate where it is decoded
            context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        caller_var.set(caller)
        if authorizer is None or not authorizer(caller):
            who = str(caller) if caller else "a caller without a SPIFFE ID"
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}")
        if isinstance(request, Undecodable):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.problem)

    @staticmethod
    def _internal(context: grpc.ServicerContext, method: str, exc: Exception) -> None:
        """Answer INTERNAL for an error nothing mapped (a bug), logged here once with its traceback;
        return (so the caller re-raises) when the RPC was already aborted with a chosen status."""
        if context.code() is not None:
            return
        request_id = request_id_var.get()
        log.error("rpc %s failed: internal error (request id %s)", method, request_id, exc_info=exc)
        context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")

    def _finish(self, context: grpc.ServicerContext, method: str, started: float, failed: BaseException | None) -> None:
        code = context.code() if hasattr(context, "code") else None
        if code is None:
            code = grpc.StatusCode.UNKNOWN if failed is not None else grpc.StatusCode.OK
        elapsed = time.perf_counter() - started
        name = method.rsplit("/", 1)[-1]
        REQUESTS.labels(self.service, name, code.name).inc()
        LATENCY.labels(self.service, name).observe(elapsed)
        if code is not grpc.StatusCode.OK:
            log.info(
                "rpc %s %s",
                method,
                code.name,
                extra={
                    "method": method,
                    "code": code.name,
                    "caller": str(caller_var.get()),
                    "ms": round(elapsed * 1e3, 3),
                },
            )
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("rpc %s OK", method, extra={"method": method, "ms": round(elapsed * 1e3, 3)})

    def _wrap_unary(
        self, behavior: Callable[..., Any], method: str, request_id: str, authorizer: Authorizer | None
    ) -> Callable[..., Any]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            failed: BaseException | None = None
            try:
                self._admit(request, context, method, request_id, authorizer)
                return behavior(request, context)
            except Exception as exc:
                failed = exc
                self._internal(context, method, exc)
                raise
            except BaseException as exc:
                failed = exc
                raise
            finally:
                self._finish(context, method, started, failed)

        return wrapped

    def _wrap_stream(
        self, behavior: Callable[..., Iterator[Any]], method: str, request_id: str, authorizer: Authorizer | None
    ) -> Callable[..., Iterator[Any]]:
        def wrapped(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            started = time.perf_counter()
            failed: BaseException | None = None
            try:
                self._admit(request, context, method, request_id, authorizer)
                yield from behavior(request, context)
            except Exception as exc:
                failed = exc
                self._internal(context, method, exc)
                raise
            except BaseException as exc:
                failed = exc
                raise
            finally:
                self._finish(context, method, started, failed)

        return wrapped


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    return lenient_deserializer(deserializer) if deserializer is not None else None
