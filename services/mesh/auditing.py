"""The seam through which every service reports what it did to the audit trail.

`AuditEvent` is the versioned event schema (like OPA's decision-log EventV1); `AuditEmitter` is
what a service calls. `emit` returns only once the event is durable for the chosen emitter: the
audit client (ztmesh.audit) waits for the audit service or its local spool; `LogAuditEmitter`
writes a structured log line and is what runs where no audit service is configured.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

SCHEMA_VERSION = 1
log = logging.getLogger("ztmesh.audit.events")


def uuid7() -> str:
    """A time-ordered UUID (RFC 9562 version 7): 48-bit Unix milliseconds, then randomness."""
    millis = time.time_ns() // 1_000_000
    raw = bytearray(millis.to_bytes(6, "big") + os.urandom(10))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return str(uuid.UUID(bytes=bytes(raw)))


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

    def to_json(self) -> str:
        body = asdict(self)
        body["time"] = self.time.isoformat()
        return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)


class AuditEmitter(Protocol):
    def emit(self, event: AuditEvent) -> None:
        """Record the event; return only once it is durable (raise if it cannot be)."""
        ...


class LogAuditEmitter:
    """Writes each event as a structured log line. Not tamper-evident: for development and for
    services started without an audit service."""

    def emit(self, event: AuditEvent) -> None:
        log.info("audit %s %s", event.action, event.outcome, extra={"audit_event": json.loads(event.to_json())})
