"""The seam through which every service reports what it did to the audit trail.

`AuditEvent` is the versioned event schema (like OPA's decision-log EventV1); `AuditEmitter` is
what a service calls. `emit` returns only once the event is durable for the chosen emitter: the
audit client (ztmesh.audit) waits for the audit service or its local spool; `LogAuditEmitter`
writes a structured log line and is what runs where no audit service is configured. A handler on the
serving loop awaits `emit_on_loop`, which never blocks the loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar

SCHEMA_VERSION = 1
log = logging.getLogger("ztmesh.audit.events")


_RAND_A = (1 << 12) - 1
_RAND_B = (1 << 62) - 1
_IDS_PER_READ = 512  # one getrandom(2) of 5 KiB per 512 ids

# Ids reach clients, so their random bits come from the OS CSPRNG, not from `random` (MT19937, whose
# output can be predicted from enough samples). One read serves many ids: a zip over two C-made lists
# hands each (rand_b, rand_a) pair to exactly one caller, and next() on it is atomic under the GIL,
# so no lock; two threads refilling at once only waste a read.
_random_pairs: Iterator[tuple[int, int]] = iter(())


def _read_random_pairs() -> tuple[int, int]:
    global _random_pairs
    data = memoryview(os.urandom(10 * _IDS_PER_READ))
    split = 8 * _IDS_PER_READ
    _random_pairs = zip(data[:split].cast("Q").tolist(), data[split:].cast("H").tolist(), strict=True)
    return next(_random_pairs)


def _forget_random_pairs() -> None:
    global _random_pairs
    _random_pairs = iter(())  # a forked child must never hand out the ids its parent will


os.register_at_fork(after_in_child=_forget_random_pairs)


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit Unix milliseconds, version, 74 random bits.

    Ids sort by their millisecond; within one they are random, as before (no counter: nothing relies
    on a finer order). Formatted by hand: uuid.UUID costs more than the rest."""
    pair = next(_random_pairs, None)
    rand_b, rand_a = pair if pair is not None else _read_random_pairs()
    value = (
        (time.time_ns() // 1_000_000) << 80 | 0x7 << 76 | (rand_a & _RAND_A) << 64 | 0b10 << 62
        | rand_b & _RAND_B
    )  # fmt: skip
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class AuditEvent:
    service: str  # emitting service: policy, keys, plugins
    action: str  # e.g. decide, keys.encrypt, plugins.execute
    outcome: str  # ALLOW, DENY, CHALLENGE, OK, ERROR, DENIED
    caller_spiffe_id: str = ""
    subject: str = ""
    resource: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    decision_id: str = ""
    trace_id: str = ""
    event_id: str = field(default_factory=uuid7)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    schema_version: int = SCHEMA_VERSION
    masked: tuple[str, ...] = ()  # JSON Pointers of details the emitter already truncated or removed

    def to_json(self) -> str:
        body = asdict(self)
        body["time"] = self.time.isoformat()
        return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


class AuditEmitter(Protocol):
    def emit(self, event: AuditEvent) -> None:
        """Record the event; return only once it is durable (raise if it cannot be)."""
        ...


async def emit_on_loop(emitter: AuditEmitter, event: AuditEvent) -> None:
    """`emitter.emit(event)` from a coroutine on the serving loop: the emitter's own asyncio path
    (`emit_async`, e.g. the spool's group commit on the loop) when it has one, else in a thread."""
    emit_async = getattr(emitter, "emit_async", None)
    if emit_async is not None:
        await emit_async(event)
    else:
        await asyncio.to_thread(emitter.emit, event)


T = TypeVar("T")
_deferred: contextvars.ContextVar[list[AuditEvent] | None] = contextvars.ContextVar("deferred_audit", default=None)


class DeferringEmitter:
    """The emitter a blocking core is given when its operations may run in a thread for a handler on
    the serving loop: inside `run_audited` its events are handed to that handler, which makes them durable
    on the loop before it answers; anywhere else it emits them itself, as `inner` would."""

    def __init__(self, inner: AuditEmitter) -> None:
        self.inner = inner

    def emit(self, event: AuditEvent) -> None:
        pending = _deferred.get()
        if pending is None:
            self.inner.emit(event)
        else:
            pending.append(event)

    async def run_audited(self, operation: Callable[..., T], *args: Any) -> T:
        """`operation(*args)` in a thread; the events it records are durable before this returns or
        raises what it raised (or why an event could not be made durable: no record, no answer)."""
        events: list[AuditEvent] = []
        context = contextvars.copy_context()
        context.run(_deferred.set, events)
        try:
            return await asyncio.get_running_loop().run_in_executor(None, context.run, operation, *args)
        finally:
            if len(events) == 1:
                await emit_on_loop(self.inner, events[0])
            elif events:
                await asyncio.gather(*(emit_on_loop(self.inner, e) for e in events))


class LogAuditEmitter:
    """Writes each event as a structured log line, sanitized as the audit trail would store it (no
    secrets, client addresses cut to their network: a log is read by more people than the trail).
    Not tamper-evident: for offline commands and tests that run without an audit service."""

    def emit(self, event: AuditEvent) -> None:
        from ztmesh.audit.record import from_emitted  # the audit core imports this module

        stored = from_emitted(event)  # raises InvalidEvent, as the audit service would refuse it
        log.info(
            "audit %s %s", event.action, event.outcome,
            extra={"audit_event": {**stored.to_json(), "details": stored.details_object()}},
        )  # fmt: skip

    async def emit_async(self, event: AuditEvent) -> None:
        self.emit(event)
