"""Errors of the audit trail. Each maps to one gRPC status code at the edge (servicer.py)."""

from __future__ import annotations

from ztmesh.mesh.errors import AuditUnavailable


class AuditError(Exception):
    """Root of every audit error."""


class InvalidEvent(AuditError):
    """An event is malformed: a field is missing, too long, not UTF-8, or details are not a JSON object.

    `field` names the offending field (JSON Pointer into details where that applies); `event_id` the
    event when it is known, so a caller can tell which event of a batch was refused."""

    def __init__(self, field: str, problem: str, event_id: str = "") -> None:
        self.field = field
        self.problem = problem
        self.event_id = event_id
        where = f"event {event_id}: " if event_id else ""
        super().__init__(f"{where}{field}: {problem}")


class BatchTooLarge(AuditError):
    def __init__(self, count: int, limit: int) -> None:
        self.limit = limit
        super().__init__(
            f"a batch holds {count} events; at most {limit} are accepted per call (ZTMESH_AUDIT_MAX_BATCH)"
        )


class DuplicateInBatch(AuditError):
    def __init__(self, event_id: str) -> None:
        super().__init__(f"event {event_id} appears twice in one batch with different contents")


class InvalidQuery(AuditError):
    """A query filter, page size or page token is malformed."""


class InvalidRange(AuditError):
    """A verify or prune range is malformed (e.g. from > to)."""


class StoreError(AuditError):
    """The audit store is unreachable or refused an operation (UNAVAILABLE at the edge)."""


class SchemaMissing(StoreError):
    """The database has no (or an incompatible) audit schema and this role may not install it."""


class AppendOnlyViolation(StoreError):
    """The database refused to change or remove an audit record (the append-only guarantee)."""


class CheckpointError(AuditError):
    """A checkpoint could not be signed or a signing key could not be loaded."""


class RecordNotFound(AuditError):
    """No record (or checkpoint) matches what a proof was asked for."""


class PruneRefused(AuditError):
    """Retention would destroy records whose chain does not verify, or nothing old enough exists."""


class SpoolError(AuditError, AuditUnavailable):
    """The emitter-side spool cannot make an event durable."""


class SpoolFull(SpoolError):
    def __init__(self, used: int, limit: int) -> None:
        super().__init__(
            f"audit spool is full ({used} of {limit} bytes); the audit service is unreachable, so the "
            "operation is refused (fail closed). Raise ZTMESH_AUDIT_SPOOL_MAX_BYTES or restore audit."
        )


class SpoolLocked(SpoolError):
    def __init__(self, path: str) -> None:
        super().__init__(f"audit spool {path} is in use by another process; give each emitter its own spool")


class SinkUnavailable(AuditError, AuditUnavailable):
    """The audit sink could not be reached; the batch may or may not have been stored (retry it)."""


class BatchRefused(SinkUnavailable):
    """The sink refused a batch as a whole without naming an event (e.g. more events than it takes per
    call): smaller batches will do. `limit` is the receiver's maximum batch when it said so, else 0."""

    def __init__(self, problem: str, limit: int = 0) -> None:
        self.limit = limit
        super().__init__(problem)


class EventRejected(AuditError):
    """The sink refused an event permanently (it will never be accepted as it is)."""

    def __init__(self, event_id: str, problem: str) -> None:
        self.event_id = event_id
        self.problem = problem
        super().__init__(f"event {event_id or '?'} rejected: {problem}")


class CallerMismatch(AuditError):
    """An emitter appended events in another service's name."""

    def __init__(self, caller: str, service: str, event_id: str) -> None:
        self.event_id = event_id
        super().__init__(
            f"{caller or 'an unidentified caller'} may not append events for service {service!r} "
            f"(event {event_id}); the service field must name the caller's own service account"
        )
