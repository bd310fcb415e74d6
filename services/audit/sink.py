"""`AuditSink`s the spool ships to: straight into a store or trail in this process (the embedded
default, and tests against a real database). The gRPC client of the audit service is the other one."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from ztmesh.audit.errors import (
    AuditError,
    BatchRefused,
    BatchTooLarge,
    EventRejected,
    InvalidEvent,
    SinkUnavailable,
    StoreError,
)
from ztmesh.audit.record import EventV1
from ztmesh.audit.store import AppendResult


class _Appender(Protocol):
    def append(self, events: Sequence[EventV1], emitter: str) -> list[AppendResult]: ...


class LocalSink:
    """Appends to an `AuditStore` or `AuditTrail` directly, as `emitter`. Given a factory instead of a
    target, it opens the target on first use and again after a failure (the database may start later)."""

    def __init__(self, target: _Appender | Callable[[], _Appender], emitter: str = "") -> None:
        self._factory = None if hasattr(target, "append") else target
        self.target: _Appender | None = target if self._factory is None else None  # type: ignore[assignment]
        self.emitter = emitter

    def _open(self) -> _Appender:
        if self.target is None:
            assert self._factory is not None
            try:
                self.target = self._factory()  # type: ignore[call-arg]
            except StoreError as exc:
                raise SinkUnavailable(str(exc)) from None
        return self.target

    def append(self, events: Sequence[EventV1], timeout: float | None = None) -> list[AppendResult]:
        target = self._open()  # in-process: no deadline to apply
        try:
            return target.append(events, self.emitter)
        except InvalidEvent as exc:
            raise EventRejected(exc.event_id, str(exc)) from None
        except BatchTooLarge as exc:
            raise BatchRefused(str(exc), exc.limit) from None
        except StoreError as exc:
            raise SinkUnavailable(str(exc)) from None
        except AuditError as exc:  # not the events' fault: retry later
            raise SinkUnavailable(str(exc)) from None
