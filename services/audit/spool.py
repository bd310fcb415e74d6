"""The emitter side of the audit trail: `emit` returns only once an event is durable, and nothing
acknowledged is ever lost or stored twice.

Concurrent `emit` calls are made durable as a group (leader/follower group commit): the first caller
with no commit in progress becomes the leader and commits everything queued so far, the others wait and
the next in line leads the following group. A group goes straight into audit when the spool is empty
and audit answers, otherwise it is appended to a local append-only spool file and fsync'd. (A committer
thread would cost two thread wake-ups per event; this costs one per follower and none alone.)

A shipper thread sends spooled events in order with retries and exponential back-off, and persists
its position only after audit acknowledged them. After a crash the
spool is replayed from that position: events may be sent twice, and audit's idempotent Append (by event
id) stores them once — at-least-once delivery plus idempotent storage is exactly-once storage.
"""

from __future__ import annotations

import fcntl
import json
import logging
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ztmesh.audit.errors import EventRejected, SpoolError, SpoolFull, SpoolLocked
from ztmesh.audit.record import DEFAULT_LIMITS, EventV1, Limits, from_emitted
from ztmesh.audit.spoolfile import SpoolFiles

log = logging.getLogger(__name__)


class AuditSink(Protocol):
    """Sends a batch to audit. Raises EventRejected for an event that will never be accepted, anything
    else for "maybe not stored, try again" (the batch is idempotent by event id)."""

    def append(self, events: Sequence[EventV1]) -> Sequence[Any]: ...


@dataclass(frozen=True)
class SpoolSettings:
    directory: Path
    max_bytes: int = 256 * 1024 * 1024  # unshipped events kept on disk at most
    when_full: str = "fail"  # "fail": refuse the operation (fail closed); "block": wait for room
    block_timeout: float = 30.0  # "block" gives up (and refuses) after this long
    batch_max: int = 500  # events per Append sent by the shipper
    retry_initial: float = 0.1  # seconds before the first retry…
    retry_max: float = 30.0  # …doubling up to this
    segment_bytes: int = 16 * 1024 * 1024
    direct: bool = True  # try audit first when nothing is spooled (no disk write when audit is up)


class _Pending:
    """One emitted event and its waiting caller. `wake` is a bare lock held until the caller may go on
    (its event is durable or refused, or it is to lead the next group): a threading.Event's Condition
    costs several times more, and there is one per decision."""

    __slots__ = ("event", "wake", "error", "lead")

    def __init__(self, event: EventV1) -> None:
        self.event = event
        self.wake = threading.Lock()
        self.wake.acquire()
        self.error: BaseException | None = None
        self.lead = False


class SpoolEmitter:
    """An `AuditEmitter` (ztmesh.mesh.auditing) backed by a durable local spool."""

    def __init__(self, sink: AuditSink, settings: SpoolSettings, limits: Limits = DEFAULT_LIMITS) -> None:
        if settings.when_full not in ("fail", "block"):
            raise SpoolError(f"spool when_full must be fail or block, got {settings.when_full!r}")
        self.sink = sink
        self.settings = settings
        self.limits = limits
        settings.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(settings.directory / "spool.lock", "a+")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolLocked(str(settings.directory)) from None
        self.files = SpoolFiles(settings.directory, settings.segment_bytes)  # replays: repairs a torn tail
        self._cond = threading.Condition()  # spool space and shipping progress
        self._queued = threading.Lock()  # guards the queue and the leader flag
        self._queue: list[_Pending] = []
        self._committing = False  # a leader is committing a group
        self._stopping = threading.Event()
        self._sink_healthy = True
        self.shipped = 0
        self.rejected = 0
        self._threads = [threading.Thread(target=self._ship_loop, name="audit-spool-ship", daemon=True)]
        for thread in self._threads:
            thread.start()

    # --- emitting -----------------------------------------------------------------------------------------

    def emit(self, event: Any) -> None:
        """Record a `ztmesh.mesh.auditing.AuditEvent`; return once it is durable, raise if it cannot be."""
        self.emit_event(from_emitted(event, self.limits))

    def emit_event(self, event: EventV1) -> None:
        if self._stopping.is_set():
            raise SpoolError("audit spool is closed")
        pending = _Pending(event)
        with self._queued:
            self._queue.append(pending)
            lead = not self._committing
            self._committing = True
        if not lead:
            pending.wake.acquire()  # the leader committed our event, or handed us the lead
            lead = pending.lead
        if lead:
            self._lead(pending)
        if pending.error is not None:
            raise pending.error

    def _lead(self, leader: _Pending) -> None:
        """Commit everything queued (the leader's own event among it), wake those callers, and hand the
        lead to the first caller that queued meanwhile."""
        with self._queued:
            batch, self._queue = self._queue, []
        try:
            self._commit(batch)
        except BaseException as exc:  # each waiter learns why its operation must fail
            for p in batch:
                p.error = exc
        finally:
            for p in batch:
                if p is not leader:
                    p.wake.release()
            with self._queued:
                if self._queue:
                    successor = self._queue[0]
                    successor.lead = True
                    successor.wake.release()
                else:
                    self._committing = False

    def _commit(self, batch: list[_Pending]) -> None:
        events = [p.event for p in batch]
        if self.settings.direct and self._sink_healthy and self.files.empty():
            try:
                self.sink.append(events)
                return
            except EventRejected as exc:  # refused as it is: the emitter's operation fails, nothing is spooled
                bad = [p for p in batch if p.event.event_id == exc.event_id]
                if bad and len(batch) > 1:
                    bad[0].error = exc
                    rest = [p for p in batch if p is not bad[0]]
                    self._commit(rest)
                    return
                raise
            except Exception as exc:
                log.warning("audit unreachable (%s); spooling to %s", exc, self.settings.directory)
                self._sink_healthy = False
        self._spool(events)

    def _spool(self, events: list[EventV1]) -> None:
        frames = [json.dumps(e.to_json(), separators=(",", ":"), ensure_ascii=False).encode() for e in events]
        needed = sum(len(f) + 8 for f in frames)
        deadline = time.monotonic() + self.settings.block_timeout
        with self._cond:
            while self.files.used_bytes() + needed > self.settings.max_bytes:
                if self.settings.when_full == "fail" or time.monotonic() >= deadline:
                    raise SpoolFull(self.files.used_bytes(), self.settings.max_bytes)
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        self.files.append(frames)  # written and fsync'd before anyone is told it is durable
        with self._cond:
            self._cond.notify_all()

    # --- shipping -----------------------------------------------------------------------------------------

    def _ship_loop(self) -> None:
        delay = self.settings.retry_initial
        while True:
            frames = self.files.read_batch(self.settings.batch_max)
            if not frames:
                self._sink_healthy = True
                if self._stopping.is_set():
                    return
                with self._cond:
                    self._cond.wait(0.2)
                continue
            events = [EventV1.from_json(json.loads(payload)) for _, payload in frames]
            try:
                self.sink.append(events)
            except EventRejected as exc:
                self._dead_letter(frames, events, exc)
                continue
            except Exception as exc:
                self._sink_healthy = False
                log.warning("audit spool: shipping %d events failed (%s); retrying in %.1fs", len(events), exc, delay)
                if self._stopping.wait(delay * random.uniform(0.5, 1.0)):
                    return  # closing: whatever is left stays spooled for the next start
                delay = min(delay * 2, self.settings.retry_max)
                continue
            delay = self.settings.retry_initial
            self.files.advance(frames[-1][0])  # persisted only now: a crash before here resends them
            self.shipped += len(events)
            with self._cond:
                self._cond.notify_all()

    def _dead_letter(self, frames: list[tuple[Any, bytes]], events: list[EventV1], exc: EventRejected) -> None:
        """Move an event audit will never accept aside, so it cannot block the ones behind it."""
        index = next((i for i, e in enumerate(events) if e.event_id == exc.event_id), None)
        if index is None:  # the sink did not say which: ship one by one to find it
            index = self._find_rejected(events) if len(frames) > 1 else 0
            if index is None:
                return
        if index > 0:
            self.sink.append(events[:index])
            self.files.advance(frames[index - 1][0])
        self.files.dead_letter(frames[index][1], str(exc))
        self.files.advance(frames[index][0])
        self.rejected += 1
        log.error("audit refused spooled event %s for good (%s); kept in %s", exc.event_id, exc.problem,
                  self.files.rejected_path)  # fmt: skip

    def _find_rejected(self, events: list[EventV1]) -> int | None:
        for i, event in enumerate(events):
            try:
                self.sink.append([event])
            except EventRejected:
                return i
        return None

    # --- lifecycle ----------------------------------------------------------------------------------------

    def pending(self) -> int:
        """Events spooled but not yet acknowledged by audit."""
        return self.files.count_unshipped()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything spooled has been shipped; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.files.empty():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.notify_all()
                self._cond.wait(min(remaining, 0.1))
        return True

    def close(self, flush_timeout: float = 5.0) -> None:
        """Stop: events already durable stay so; unshipped ones ship on the next start."""
        if self._stopping.is_set():
            return
        if self._sink_healthy:  # with audit unreachable, waiting would only delay shutdown: the spool keeps it
            self.flush(flush_timeout)
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        self.files.close()
        self._lock_file.close()
