"""The gRPC edge every servicer shares: who is calling, a request decoder that never fails, and one
mapping from domain errors to status codes, most specific first (httpx's `map_httpcore_exceptions`).

A servicer declares its errors in an `Edge` and decorates each RPC with `@edge.rpc`: a raised domain
error becomes its status code with the error's own message (which names the field, key or plugin at
fault). The mesh's errors follow every service's rules: a malformed peer identity is UNAUTHENTICATED,
an audit trail that cannot make an event durable UNAVAILABLE. Anything else is a bug, which the mesh
interceptor answers INTERNAL and logs once with its traceback: no RPC answers UNKNOWN.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import math
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple, NoReturn, ParamSpec, TypeVar

import grpc
from google.protobuf import struct_pb2, timestamp_pb2

from ztmesh.mesh.errors import AuditUnavailable, InvalidField, PeerIdentityError
from ztmesh.mesh.spiffe import SpiffeId

P = ParamSpec("P")
R = TypeVar("R")
Trailers = Callable[[BaseException], Sequence[tuple[str, str]]]

caller_var: contextvars.ContextVar[SpiffeId | None] = contextvars.ContextVar("caller", default=None)


def current_caller() -> SpiffeId | None:
    """SPIFFE ID of the caller of the RPC being handled (set by the mesh interceptor, per call: the
    asyncio task's context, which a blocking handler's pool thread runs in)."""
    return caller_var.get()


def caller_id() -> str:
    """The caller's SPIFFE ID as the string audit records and access policies use ("" when none)."""
    caller = caller_var.get()
    return str(caller) if caller else ""


# --- decoding ---------------------------------------------------------------------------------------


class Undecodable:
    """What the request decoder yields for bytes that are not the expected message (a string field
    holding invalid UTF-8, a truncated varint): the interceptor answers INVALID_ARGUMENT with the
    problem, where gRPC alone would answer INTERNAL without one."""

    def __init__(self, message_type: str, problem: str) -> None:
        self.problem = f"request is not a valid {message_type}: {problem}"


def lenient_deserializer(deserialize: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """`deserialize` (a generated `Message.FromString`), answering `Undecodable` instead of raising."""
    if getattr(deserialize, "lenient", False):
        return deserialize
    message_class = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    message_type = descriptor.full_name if descriptor is not None else "request message"

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # any decoding failure is the caller's bytes, never our bug
            return Undecodable(message_type, str(exc).rsplit(": ", 1)[-1] or type(exc).__name__)

    parse.lenient = True  # type: ignore[attr-defined]
    return parse


def timestamp_to_datetime(stamp: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A protobuf Timestamp as an aware datetime; InvalidField naming `field` when no datetime can hold
    it (seconds beyond years 1-9999, nanos outside 0-999999999), where protobuf raises a bare ValueError."""
    try:
        return stamp.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        problem = str(exc).removeprefix("Timestamp is not valid: ").rstrip(".")
        raise InvalidField(field, f"not a valid time ({problem[:1].lower()}{problem[1:]})") from None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A protobuf Struct as plain Python values, exactly as `json_format.MessageToDict` gives them
    (numbers as floats, an unset value as None; NaN and infinities refused with ValueError), for a
    fraction of its cost: it reads the verified token's claims on every ext_authz Check."""
    return {key: _plain_value(value) for key, value in struct.fields.items()}


def _plain_value(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "string_value":
        return value.string_value
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise ValueError(f"Struct holds a number JSON cannot: {number}")
        return number
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain_value(item) for item in value.list_value.values]
    return None  # null_value, or nothing set


# --- errors -> status codes -------------------------------------------------------------------------


class StatusRule(NamedTuple):
    """Errors of `kind` (and its subclasses) answer `code`; `prefix` goes before the error's message."""

    kind: type[BaseException]
    code: grpc.StatusCode
    prefix: str = ""


# After every service's own rules, so a service may still say something more specific.
MESH_RULES: tuple[StatusRule, ...] = (
    StatusRule(PeerIdentityError, grpc.StatusCode.UNAUTHENTICATED),
    StatusRule(InvalidField, grpc.StatusCode.INVALID_ARGUMENT),
    StatusRule(AuditUnavailable, grpc.StatusCode.UNAVAILABLE, "audit trail unavailable, the operation is refused"),
)


def _check_order(rules: Sequence[StatusRule]) -> None:
    for later, rule in enumerate(rules):
        for earlier in rules[:later]:
            if issubclass(rule.kind, earlier.kind):
                raise TypeError(
                    f"status rule for {rule.kind.__name__} can never match: {earlier.kind.__name__} is listed "
                    "before it and already matches it (list the more specific error first)"
                )


class Edge:
    """One service's mapping from its domain errors to status codes, applied by `@edge.rpc`."""

    def __init__(self, *rules: StatusRule | tuple[Any, ...], trailers: Trailers | None = None) -> None:
        """`rules` most specific first (checked: a rule another shadows is a TypeError at import);
        `trailers` gives the trailing metadata a refusal carries (e.g. the id of the refused event)."""
        self.rules = (*(StatusRule(*rule) for rule in rules), *MESH_RULES)
        _check_order(self.rules)
        self._trailers = trailers

    def rule_for(self, error: BaseException) -> StatusRule | None:
        return next((rule for rule in self.rules if isinstance(error, rule.kind)), None)

    def _refusal(self, context: Any, error: Exception) -> tuple[grpc.StatusCode, str]:
        """The status and message `error` maps to, its trailers set on `context`; re-raises an error no
        rule knows (a bug, or an abort already under way) for the mesh interceptor."""
        rule = self.rule_for(error)
        if rule is None:
            raise error
        message = str(error) or type(error).__name__
        if self._trailers is not None:
            trailers = self._trailers(error)
            if trailers:
                context.set_trailing_metadata(tuple(trailers))
        return rule.code, f"{rule.prefix}: {message}" if rule.prefix else message

    def refuse(self, context: grpc.ServicerContext, error: Exception) -> NoReturn:
        """Abort a blocking handler's RPC with the status `error` maps to (see `_refusal`)."""
        context.abort(*self._refusal(context, error))
        raise AssertionError("unreachable: context.abort raises")

    async def refuse_async(self, context: grpc.aio.ServicerContext, error: Exception) -> NoReturn:
        """Abort an asyncio handler's RPC with the status `error` maps to (see `_refusal`)."""
        await context.abort(*self._refusal(context, error))
        raise AssertionError("unreachable: context.abort raises")

    def rpc(self, method: Callable[P, R]) -> Callable[P, R]:
        """Decorate a servicer method `(self, request, context)`: unary or server-streaming, `async def`
        (run on the event loop) or blocking (run in the server's thread pool)."""
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            async def unary_async(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await method(*args, **kwargs)  # type: ignore[misc]
                except Exception as error:
                    await self.refuse_async(_context_of(args, kwargs), error)

            return unary_async  # type: ignore[return-value]

        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            async def streaming_async(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
                try:
                    async for item in method(*args, **kwargs):  # type: ignore[attr-defined]
                        yield item
                except Exception as error:
                    await self.refuse_async(_context_of(args, kwargs), error)

            return streaming_async  # type: ignore[return-value]

        if inspect.isgeneratorfunction(method):

            @functools.wraps(method)
            def streaming(*args: Any, **kwargs: Any) -> Iterator[Any]:
                try:
                    yield from method(*args, **kwargs)  # type: ignore[misc]
                except Exception as error:
                    self.refuse(_context_of(args, kwargs), error)

            return streaming  # type: ignore[return-value]

        @functools.wraps(method)
        def unary(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except Exception as error:
                self.refuse(_context_of(args, kwargs), error)

        return unary  # type: ignore[return-value]


def _context_of(args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    return kwargs["context"] if "context" in kwargs else args[-1]
