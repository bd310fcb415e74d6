"""The server interceptor every service runs: request id, SPIFFE authorization, metrics, access log.

Authorization is an allow-list per full method name (`/pkg.Service/Method`, or `/pkg.Service/*`);
a method with no rule is refused, so a new RPC is closed until someone decides who may call it.
It also holds the edge's last line (ztmesh.mesh.edge): a malformed peer identity is UNAUTHENTICATED,
undecodable request bytes INVALID_ARGUMENT, and an error no servicer mapped INTERNAL, logged once.

Handlers are `async def` (run on the event loop: the hot RPCs) or plain functions and generators,
which block (stores, wasmtime) and run in the server's thread pool with a synchronous context; the
admission, metrics and access log of both run here, on the loop. Each handler is wrapped once, when it
is registered on the `AdmittingServer`, not by grpc.aio's per-call interceptor chain.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, TypeAlias

import grpc
from grpc._cython import cygrpc
from grpc.aio import _server as _aio_server

from ztmesh.mesh.edge import Undecodable, caller_var, current_caller, lenient_deserializer
from ztmesh.mesh.errors import PeerIdentityError
from ztmesh.mesh.log import request_id_var
from ztmesh.mesh.metrics import LATENCY, REQUESTS
from ztmesh.mesh.spiffe import Authorizer
from ztmesh.mesh.tls import KeyExchangeGuard, peer_identity

__all__ = ["AdmittingServer", "MeshInterceptor", "MethodRules", "current_caller"]
log = logging.getLogger("ztmesh.access")
_DONE = object()
Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


class MethodRules:
    """Who may call what: full method name (or `/pkg.Service/*`) -> authorizer."""

    def __init__(self, rules: Mapping[str, Authorizer]) -> None:
        self._rules = dict(rules)

    def authorizer(self, method: str) -> Authorizer | None:
        rule = self._rules.get(method)
        if rule is None:
            rule = self._rules.get(method.rsplit("/", 1)[0] + "/*")
        return rule


def sync_context(context: Context) -> grpc.ServicerContext:
    """The synchronous view of an asyncio call's context that a blocking handler is given (grpc.aio's own,
    as for handlers it runs in its migration thread pool: abort blocks until the loop has aborted)."""
    return cygrpc._SyncServicerContext(context)  # type: ignore[no-any-return]


class MeshInterceptor:
    """Wraps each method handler once, when it is registered (`AdmittingServer`), rather than through
    grpc.aio's per-call interceptor chain: that chain costs a coroutine and a lookup on every call."""

    def __init__(self, service: str, rules: MethodRules, pool: Executor, guard: KeyExchangeGuard | None = None) -> None:
        self.service = service
        self.rules = rules
        self._pool = pool
        self._guard = guard  # ZTMESH_TLS_REQUIRE_PQ: after authorization, so its refusals are counted too
        self._requests: dict[tuple[str, grpc.StatusCode], Any] = {}  # labelled metric children, made once
        self._latency: dict[str, Any] = {}

    def wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        """`handler` of the full method name `method`, admitted, counted and logged here."""
        return self._wrap(handler, method)

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        authorizer = self.rules.authorizer(method)
        for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            if inspect.isasyncgenfunction(behavior):
                wrapped = self._wrap_async_stream(behavior, method, authorizer)
            elif inspect.iscoroutinefunction(behavior):
                wrapped = self._wrap_async(behavior, method, authorizer)
            elif kind.endswith("_stream"):
                wrapped = self._wrap_blocking_stream(behavior, method, authorizer)
            else:
                wrapped = self._wrap_blocking(behavior, method, authorizer)
            changes: dict[str, Any] = {kind: wrapped}
            if kind.startswith("unary_"):
                changes["request_deserializer"] = _lenient(handler.request_deserializer)
            return handler._replace(**changes)
        return handler

    async def _admit(self, request: Any, context: Context, method: str, authorizer: Authorizer | None) -> None:
        request_id = ""
        for key, value in context.invocation_metadata() or ():
            if key == "x-request-id":
                request_id = str(value)[:128]
                break
        request_id_var.set(request_id or os.urandom(16).hex())
        caller_var.set(None)
        try:
            caller = peer_identity(context)
        except PeerIdentityError as exc:  # logged once per certificate where it is decoded
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        caller_var.set(caller)
        if authorizer is None or not authorizer(caller):
            who = str(caller) if caller else "a caller without a SPIFFE ID"
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{who} may not call {method}")
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.problem)
        if self._guard is not None:
            refusal = self._guard.refusal(context)
            if refusal:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, refusal)

    @staticmethod
    async def _internal(context: Context, method: str, exc: Exception) -> None:
        """Answer INTERNAL for an error nothing mapped (a bug), logged here once with its traceback;
        return (so the caller re-raises) when the RPC was already aborted with a chosen status."""
        if context.code() is not None:
            return
        request_id = request_id_var.get()
        log.error("rpc %s failed: internal error (request id %s)", method, request_id, exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")

    def _finish(self, context: Context, method: str, started: float, failed: BaseException | None) -> None:
        code = context.code()
        if code is None:
            code = grpc.StatusCode.UNKNOWN if failed is not None else grpc.StatusCode.OK
        elapsed = time.perf_counter() - started
        counter = self._requests.get((method, code))
        if counter is None:
            name = method.rsplit("/", 1)[-1]
            counter = self._requests[method, code] = REQUESTS.labels(self.service, name, code.name)
            self._latency.setdefault(method, LATENCY.labels(self.service, name))
        counter.inc()
        self._latency[method].observe(elapsed)
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

    def _wrap_async(self, behavior: Callable[..., Any], method: str, authorizer: Authorizer | None) -> Any:
        async def wrapped(request: Any, context: Context) -> Any:
            async with _Accounted(self, request, context, method, authorizer):
                return await behavior(request, context)

        return wrapped

    def _wrap_blocking(self, behavior: Callable[..., Any], method: str, authorizer: Authorizer | None) -> Any:
        async def wrapped(request: Any, context: Context) -> Any:
            async with _Accounted(self, request, context, method, authorizer):
                run: Callable[..., Any] = contextvars.copy_context().run  # the pool thread sees this call's caller
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._pool, run, behavior, request, sync_context(context))

        return wrapped

    def _wrap_async_stream(self, behavior: Callable[..., Any], method: str, authorizer: Authorizer | None) -> Any:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            async with _Accounted(self, request, context, method, authorizer):
                async for item in behavior(request, context):
                    yield item

        return wrapped

    def _wrap_blocking_stream(self, behavior: Callable[..., Any], method: str, authorizer: Authorizer | None) -> Any:
        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            async with _Accounted(self, request, context, method, authorizer):
                run: Callable[..., Any] = contextvars.copy_context().run
                loop = asyncio.get_running_loop()
                items = await loop.run_in_executor(self._pool, run, behavior, request, sync_context(context))
                while True:  # each item is produced in the pool: a generator may block between items
                    item = await loop.run_in_executor(self._pool, run, next, items, _DONE)
                    if item is _DONE:
                        break
                    yield item

        return wrapped


class _Accounted:
    """One call's admission and bookkeeping around its handler, whatever kind of handler: admit (request
    id, caller, rule), then on the way out an unmapped error becomes INTERNAL and the call is counted
    and logged. A class rather than a generator-based context manager: it is on every call's path."""

    __slots__ = ("interceptor", "request", "context", "method", "authorizer", "started")

    def __init__(
        self, interceptor: MeshInterceptor, request: Any, context: Context, method: str, authorizer: Authorizer | None
    ) -> None:
        self.interceptor, self.request, self.context = interceptor, request, context
        self.method, self.authorizer = method, authorizer
        self.started = time.perf_counter()

    async def __aenter__(self) -> None:
        try:
            await self.interceptor._admit(self.request, self.context, self.method, self.authorizer)
        except BaseException as exc:  # refused: counted and logged like any other outcome
            await self.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def __aexit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> bool:
        try:
            if isinstance(exc, Exception):
                await self.interceptor._internal(self.context, self.method, exc)
        finally:
            self.interceptor._finish(self.context, self.method, self.started, exc)
        return False


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    return lenient_deserializer(deserializer) if deserializer is not None else None


class _AdmittingHandlers(grpc.GenericRpcHandler):
    """A servicer's generic handler whose method handlers come out wrapped by the mesh interceptor."""

    def __init__(self, inner: grpc.GenericRpcHandler, interceptor: MeshInterceptor) -> None:
        self._inner = inner
        self._interceptor = interceptor
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is None or known[0] is not handler:
            known = self._wrapped[method] = (handler, self._interceptor.wrap(handler, method))
        return known[1]


class AdmittingServer(_aio_server.Server):
    """grpc.aio's server, with every handler registered on it wrapped by the mesh interceptor."""

    def __init__(self, interceptor: MeshInterceptor, pool: Executor, options: Sequence[tuple[str, Any]]) -> None:
        super().__init__(pool, (), (), options, None, None)
        self._interceptor = interceptor

    def add_generic_rpc_handlers(self, generic_rpc_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        super().add_generic_rpc_handlers([_AdmittingHandlers(h, self._interceptor) for h in generic_rpc_handlers])

    def add_registered_method_handlers(self, service_name: str, method_handlers: dict[str, Any]) -> None:
        wrapped = {
            name: self._interceptor.wrap(handler, f"/{service_name}/{name}")
            for name, handler in method_handlers.items()
        }
        super().add_registered_method_handlers(service_name, wrapped)
