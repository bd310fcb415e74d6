"""Event and decision ids: RFC 9562 version 7, time-ordered, and distinct across forked server processes
(ZTMESH_PROCESSES forks workers; duplicate ids would make audit drop one event as a retry); and the log
emitter writing only what the trail would store."""

from __future__ import annotations

import logging
import multiprocessing
import time
import uuid

import pytest

from ztmesh.audit.errors import InvalidEvent
from ztmesh.mesh.auditing import AuditEvent, LogAuditEmitter, uuid7


def test_uuid7_layout_and_order() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(1000)]
    after = time.time_ns() // 1_000_000
    parsed = [uuid.UUID(i) for i in ids]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, ids, strict=True))
    assert all(before <= u.int >> 80 <= after for u in parsed)
    assert len(set(ids)) == len(ids)


def _ids(queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put([uuid7() for _ in range(200)])


def test_forked_processes_draw_different_ids() -> None:
    uuid7()  # the parent's generator state is what a fork copies
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_ids, args=(queue,)) for _ in range(2)]
    for child in children:
        child.start()
    first, second = queue.get(timeout=30), queue.get(timeout=30)
    for child in children:
        child.join(timeout=30)
    assert not set(first) & set(second)


def test_log_emitter_writes_what_the_trail_would_store(caplog: pytest.LogCaptureFixture) -> None:
    """The log line of an event is sanitized like the trail's record: a secret in the details is gone and
    a client address is cut to its network - nothing the audit service would refuse to keep reaches a log."""
    event = AuditEvent(
        service="keys", action="keys.rewrap", outcome="OK",
        details={"client": "10.1.2.3", "password": "hunter2", "nested": {"api_token": "tok-123"}, "count": 3},
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="ztmesh.audit.events"):
        LogAuditEmitter().emit(event)
    (logged,) = [r.audit_event for r in caplog.records if hasattr(r, "audit_event")]
    assert logged["details"]["client"] == "10.1.2.0"
    assert logged["details"]["count"] == 3
    assert "password" not in logged["details"] and "api_token" not in logged["details"]["nested"]
    assert "hunter2" not in caplog.text and "tok-123" not in caplog.text
    assert logged["event_id"] == event.event_id and logged["masked"]


def test_log_emitter_refuses_what_audit_would_refuse() -> None:
    with pytest.raises(InvalidEvent, match="service"):
        LogAuditEmitter().emit(AuditEvent(service="Not A Service!", action="decide", outcome="ALLOW"))
