"""The emitter side of the audit trail: `emit` returns only once an event is durable, and nothing
acknowledged is ever lost or stored twice.

Concurrent `emit` calls are made durable as a group (leader/follower group commit): the first caller
with no commit in progress becomes the leader and commits everything queued so far, the others wait and
the next in line leads the following group. A group goes straight into audit when the spool is empty
and audit answers within a short per-attempt deadline, otherwise it is appended to a local append-only
spool file and fsync'd. (A committer thread would cost two thread wake-ups per event; this costs one per
follower and none alone.) Handlers on the serving loop use `emit_async`: the same group commit, on the
loop (ztmesh.audit.spool_loop).

A shipper thread sends spooled events in order, in batches no larger than audit takes, retrying about
once a second, and persists its position only after audit acknowledged them. After a crash the spool is
replayed from that position: events may be sent twice, and audit's idempotent Append (by event id)
stores them once — at-least-once delivery plus idempotent storage is exactly-once storage. Nothing ends
the shipper; a shipper that makes no progress says so (log, `ztmesh_audit_spool_stalled`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ztmesh.audit.errors import BatchRefused, EventRejected, InvalidEvent, SpoolError, SpoolFull, SpoolLocked
from ztmesh.audit.record import DEFAULT_LIMITS, EventV1, Limits, from_emitted
from ztmesh.audit.spool_loop import LoopGroupCommit
from ztmesh.audit.spool_metrics import SpoolMetrics
from ztmesh.audit.spool_slots import SlotAdopter
from ztmesh.audit.spoolfile import Damage, Position, SpoolFiles
from ztmesh.mesh.auditing import AuditEvent

log = logging.getLogger(__name__)


class AuditSink(Protocol):
    """Sends a batch to audit within `timeout` seconds (None: the sink's own). Raises EventRejected for an
    event that will never be accepted, BatchRefused for a batch to send in smaller parts, anything else for
    "maybe not stored, try again" (the batch is idempotent by event id)."""

    def append(self, events: Sequence[EventV1], timeout: float | None = None) -> Sequence[Any]: ...


@dataclass(frozen=True)
class SpoolSettings:
    directory: Path
    max_bytes: int = 256 * 1024 * 1024  # unshipped events kept on disk at most
    when_full: str = "fail"  # "fail": refuse the operation (fail closed); "block": wait for room
    block_timeout: float = 30.0  # "block" gives up (and refuses) after this long
    batch_max: int = 500  # events per Append, lowered to what the receiver takes once it says so
    retry_initial: float = 0.1  # seconds before the first retry…
    retry_max: float = 0.5  # …doubling up to this: shipping resumes within about this long of audit's return
    segment_bytes: int = 16 * 1024 * 1024
    direct: bool = True  # try audit first when nothing is spooled (no disk write when audit is up)
    direct_timeout: float = 0.5  # what an operation waits for audit itself before its event is spooled
    ship_timeout: float = 5.0  # per shipped batch (nobody waits on it)
    stall_after: float = 30.0  # events waiting this long with nothing shipped: the shipper is reported stuck
    service: str = ""  # emitting service, for the events the spool itself records (damage); "" = none
    adopt: bool = False  # also drain sibling slots (folders beside `directory`) that no process holds
    adopt_interval: float = 2.0


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
        self.metrics = SpoolMetrics(str(settings.directory))
        self._damaged: list[Damage] = []  # found while opening, recorded to the trail once shipping runs
        self.damaged = 0
        settings.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(settings.directory / "spool.lock", "a+")  # noqa: SIM115 - held for our lifetime
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise SpoolLocked(str(settings.directory)) from None
        try:  # replays: repairs a torn tail
            self.files = SpoolFiles(settings.directory, settings.segment_bytes, self._on_damage)
        except BaseException:
            self._lock_file.close()
            raise
        self._cond = threading.Condition()  # spool space and shipping progress
        self._queued = threading.Lock()  # guards the queue and the leader flag
        self._queue: list[_Pending] = []
        self._committing = False  # a leader is committing a group
        self._spooling = threading.Lock()  # one group at a time into the spool file
        # The loop's own group commit (emit_async), when the sink can send from the loop.
        self._loop_commit = LoopGroupCommit(self, sink) if getattr(sink, "append_async", None) is not None else None
        self._stopping = threading.Event()
        self._sink_healthy = True
        self._batch_max = settings.batch_max
        self.metrics.batch_max.set(settings.batch_max)
        self._progress_at = time.monotonic()  # last time the spool was empty or a batch shipped
        self._stall_reported = 0.0
        self._last_error = ""
        self._failing = False
        self.shipped = 0
        self.rejected = 0
        # Named before it starts: the shipper's first act may be to record open-time damage, whose emit
        # looks at self._shipper (found as "no attribute '_shipper'": the damage record was lost).
        self._shipper = threading.Thread(target=self._ship_loop, name="audit-spool-ship", daemon=True)
        self._threads = [self._shipper]
        self._shipper.start()
        if settings.adopt:
            adopter = SlotAdopter(
                settings.directory, self._open_sibling, settings.adopt_interval, self.metrics.adopted.inc
            )
            self._threads.append(self._start(functools.partial(adopter.run, self._stopping), "audit-spool-adopt"))

    @staticmethod
    def _start(target: Any, name: str) -> threading.Thread:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        return thread

    # --- emitting -----------------------------------------------------------------------------------------

    def emit(self, event: Any) -> None:
        """Record a `ztmesh.mesh.auditing.AuditEvent`; return once it is durable, raise if it cannot be."""
        self.emit_event(from_emitted(event, self.limits))

    async def emit_async(self, event: Any) -> None:
        """`emit` for a caller on the event loop: returns once the event is durable, raises if it cannot be."""
        await self.emit_event_async(from_emitted(event, self.limits))

    async def emit_event_async(self, event: EventV1) -> None:
        if self._stopping.is_set():
            raise SpoolError("audit spool is closed")
        if self._loop_commit is None:  # a blocking sink: its calls belong in a thread
            await asyncio.to_thread(self.emit_event, event)
        else:
            await self._loop_commit.emit(_Pending(event))

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
                if p.error is None:
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

    def goes_direct(self) -> bool:
        """Whether a group goes straight to audit: it answered last time and no backlog is spooled."""
        return self.settings.direct and self._sink_healthy and self.files.empty()

    def _commit(self, batch: list[_Pending]) -> None:
        if self.goes_direct():
            batch = self._append_direct(batch)
            if not batch:
                return
        self.spool(batch)

    def _append_direct(self, batch: list[_Pending]) -> list[_Pending]:
        """Send the group straight to audit (see `_direct_plan`); returns what is left to spool."""
        plan = self.direct_plan(batch)
        try:
            chunk = next(plan)
            while True:
                failure: Exception | None = None
                try:
                    self.sink.append([p.event for p in chunk], timeout=self.settings.direct_timeout)
                except Exception as exc:
                    failure = exc
                chunk = plan.send(failure)
        except StopIteration as finished:
            left: list[_Pending] = finished.value
            return left

    def direct_plan(self, batch: list[_Pending]) -> Generator[list[_Pending], Exception | None, list[_Pending]]:
        """What to send straight to audit, in parts it accepts, each within the short per-attempt deadline
        (a stalled audit costs an operation that much, then its event is spooled): yields each part and is
        sent how its append failed (None: stored), so the blocking and the loop's path decide alike.
        Returns what is left to spool: nothing when audit took everything; a refused event's caller is
        failed, not spooled."""
        left = [p for p in batch if p.error is None]
        while left:
            chunk = left[: self._batch_max]
            failure = yield chunk
            if failure is None:
                del left[: len(chunk)]
            elif isinstance(failure, EventRejected):  # refused as it is: that operation fails, nothing spooled
                bad = next((p for p in chunk if p.event.event_id == failure.event_id), None)
                if bad is None and len(chunk) == 1:
                    bad = chunk[0]
                if bad is None:
                    return left  # which one is unknown: the shipper finds it and sets it aside
                bad.error = failure
                left.remove(bad)
            elif isinstance(failure, BatchRefused) and len(chunk) > 1:
                self._learn_batch_limit(failure, len(chunk))
            else:
                self._sink_down(failure)
                return left
        return left

    def _sink_down(self, exc: Exception) -> None:
        if self._sink_healthy:
            log.warning("audit unreachable (%s); spooling to %s", exc, self.settings.directory)
        self._sink_healthy = False
        self._last_error = str(exc)

    def spool(self, batch: list[_Pending]) -> None:
        """Append the group to the spool file and fsync it (blocks; raises SpoolFull when it stays full)."""
        with self._spooling:  # a blocking leader and the loop's may both be spooling a group
            self._spool_locked(batch)

    def _spool_locked(self, batch: list[_Pending]) -> None:
        if not self._shipper.is_alive() and not self._stopping.is_set():
            self._restart_shipper()
        deadline = time.monotonic() + self.settings.block_timeout
        while True:
            frames = [json.dumps(p.event.to_json(), separators=(",", ":"), ensure_ascii=False).encode() for p in batch]
            needed = sum(len(f) + 8 for f in frames)
            if self.files.used_bytes() + needed <= self.settings.max_bytes:
                break
            if self.settings.direct:  # no room here, but audit itself may answer again
                batch = self._append_direct(batch)
                if not batch:
                    return
            if self.settings.when_full == "fail" or time.monotonic() >= deadline:
                self.metrics.refused_full.inc(len(batch))
                raise SpoolFull(self.files.used_bytes(), self.settings.max_bytes)
            with self._cond:
                self._cond.wait(min(0.5, max(0.0, deadline - time.monotonic())))
        self.files.append(frames)  # written and fsync'd before anyone is told it is durable
        self.metrics.spooled.inc(len(frames))
        with self._cond:
            self._cond.notify_all()

    # --- shipping -----------------------------------------------------------------------------------------

    def _ship_loop(self) -> None:
        delay = self.settings.retry_initial
        while True:
            failure: Exception | None = None
            shipped = 0
            try:
                shipped = self._ship_once()
            except Exception as exc:  # nothing ends the shipper: audit down, a refusal, a bug in a frame
                failure = exc
            try:
                self._observe(failure)
            except Exception:  # reporting must not stop shipping either
                log.exception("audit spool %s: could not report the backlog", self.settings.directory)
            if failure is not None:
                if self._stopping.wait(delay * random.uniform(0.5, 1.0)):
                    return  # closing: whatever is left stays spooled for the next start
                delay = min(delay * 2, self.settings.retry_max)
                continue
            delay = self.settings.retry_initial
            if shipped:
                continue
            self._sink_healthy = True
            if self._stopping.is_set():
                return
            with self._cond:
                self._cond.wait(0.2)

    def _ship_once(self) -> int:
        """Ship one batch from the cursor; the number of frames consumed (0: nothing waiting)."""
        self._record_damage()
        frames = self.files.read_batch(self._batch_max)
        if not frames:
            return 0
        items: list[tuple[Position, EventV1]] = []
        for position, payload in frames:
            try:
                items.append((position, EventV1.from_json(json.loads(payload))))
            except (ValueError, KeyError, TypeError, InvalidEvent) as exc:  # intact checksum, not an event: aside
                if items:
                    self._send(items)
                    items = []
                log.error("audit spool %s: frame before %s is not an event (%s)", self.settings.directory,
                          position, exc)  # fmt: skip
                self.files.quarantine_frame(position, payload)
                self.files.advance(position)
        if items:
            self._send(items)
        return len(frames)

    def _send(self, items: list[tuple[Position, EventV1]]) -> None:
        """Append `items` in order, in parts audit accepts, advancing the cursor after each; raises (and the
        loop retries from the cursor) when audit cannot be reached."""
        try:
            self.sink.append([e for _, e in items], timeout=self.settings.ship_timeout)
        except BatchRefused as exc:
            if len(items) == 1:
                raise
            size = self._learn_batch_limit(exc, len(items))
            for start in range(0, len(items), size):
                self._send(items[start : start + size])
            return
        except EventRejected as exc:
            index = next((i for i, (_, e) in enumerate(items) if e.event_id == exc.event_id), None)
            if index is None and len(items) > 1:  # the sink did not say which: halve until it is alone
                half = len(items) // 2
                self._send(items[:half])
                self._send(items[half:])
                return
            index = index or 0
            if index > 0:
                self._send(items[:index])
            self._dead_letter(items[index], exc)
            if index + 1 < len(items):
                self._send(items[index + 1 :])
            return
        self.files.advance(items[-1][0])  # persisted only now: a crash before here resends them
        self.shipped += len(items)
        self.metrics.shipped.inc(len(items))
        self._progress_at = time.monotonic()
        with self._cond:
            self._cond.notify_all()

    def _learn_batch_limit(self, exc: BatchRefused, sent: int) -> int:
        """Batches from now on are no larger than the receiver said it takes, else half of what it refused."""
        size = exc.limit if 0 < exc.limit < sent else max(1, sent // 2)
        if size < self._batch_max:
            log.warning("audit refused a batch of %d events (%s); sending at most %d per Append from now on",
                        sent, exc, size)  # fmt: skip
            self._batch_max = size
            self.metrics.batch_max.set(size)
        return size

    def _dead_letter(self, item: tuple[Position, EventV1], exc: EventRejected) -> None:
        """Move an event audit will never accept aside, so it cannot block the ones behind it."""
        position, event = item
        payload = json.dumps(event.to_json(), separators=(",", ":"), ensure_ascii=False).encode()
        self.files.dead_letter(payload, str(exc))
        self.files.advance(position)
        self.rejected += 1
        self.metrics.rejected.inc()
        log.error("audit refused spooled event %s for good (%s); kept in %s", event.event_id, exc.problem,
                  self.files.rejected_path)  # fmt: skip

    def _observe(self, failure: Exception | None) -> None:
        """Export the backlog, and report a shipper that has made no progress for `stall_after` seconds."""
        if failure is not None:
            self._sink_healthy = False
            self._last_error = f"{type(failure).__name__}: {failure}"
            self.metrics.ship_failures.inc()
            # The first failure of a run is a warning; a long one is the stall error below, every stall_after.
            level = logging.WARNING if not self._failing else logging.DEBUG
            log.log(level, "audit spool %s: shipping failed (%s); retrying", self.settings.directory, self._last_error)
        self._failing = failure is not None
        used = self.files.used_bytes()
        self.metrics.pending_bytes.set(used)
        now = time.monotonic()
        if self.files.empty():
            if self._stall_reported:
                log.warning("audit spool %s: shipping again; the backlog is gone", self.settings.directory)
                self.metrics.stalled.set(0)
            self._progress_at, self._stall_reported = now, 0.0
            return
        waited = now - self._progress_at
        if waited < self.settings.stall_after:
            if self._stall_reported:
                log.warning("audit spool %s: shipping again after %.1fs", self.settings.directory, waited)
                self.metrics.stalled.set(0)
                self._stall_reported = 0.0
            return
        if now - self._stall_reported >= self.settings.stall_after:
            self._stall_reported = now
            self.metrics.stalled.set(1)
            log.error("audit spool %s: %d bytes waiting and nothing shipped for %.0fs (last error: %s)",
                      self.settings.directory, used, waited, self._last_error or "none")  # fmt: skip

    def _restart_shipper(self) -> None:
        log.error("audit spool %s: the shipper thread had ended; starting it again", self.settings.directory)
        self._shipper = self._start(self._ship_loop, "audit-spool-ship")
        self._threads.append(self._shipper)

    # --- damage -------------------------------------------------------------------------------------------

    def _on_damage(self, damage: Damage) -> None:
        self.damaged += 1
        self.metrics.damaged.inc()
        if damage.torn:
            log.warning("audit spool %s: segment %d ends in a torn write at frame %d (byte %d, %d bytes; never "
                        "acknowledged); cut off, bytes kept in %s", self.settings.directory, damage.segment,
                        damage.frame, damage.offset, damage.length, damage.quarantined)  # fmt: skip
        else:
            log.error("audit spool %s: segment %d frame %d (byte %d, %d bytes) is damaged: its event is not "
                      "shipped; bytes kept in %s, the frames after it ship", self.settings.directory,
                      damage.segment, damage.frame, damage.offset, damage.length, damage.quarantined)  # fmt: skip
        self._damaged.append(damage)

    def _record_damage(self) -> None:
        """Put each damaged stretch in the trail itself (spooled like any event), so the loss is on record
        where verify and queries look, not only in this pod's log."""
        while self._damaged and self.settings.service:
            damage = self._damaged.pop(0)
            event = AuditEvent(
                service=self.settings.service, action="audit.spool_damaged", outcome="ERROR",
                resource=str(damage.quarantined),
                details={"segment": damage.segment, "frame": damage.frame, "offset": damage.offset,
                         "bytes": damage.length, "torn": damage.torn, "spool": str(self.settings.directory)},
            )  # fmt: skip
            # From another thread: with a full "block" spool an emit here would wait for this very shipper.
            self._start(functools.partial(self._emit_quietly, event), "audit-spool-damage")

    def _emit_quietly(self, event: AuditEvent) -> None:
        try:
            self.emit(event)
        except Exception as exc:
            log.error("audit spool %s: could not record the damage event (%s)", self.settings.directory, exc)

    # --- lifecycle ----------------------------------------------------------------------------------------

    def _open_sibling(self, directory: Path) -> SpoolEmitter:
        """Another slot of this spool, to drain only (SpoolLocked while a live process holds it)."""
        return SpoolEmitter(self.sink, dataclasses.replace(self.settings, directory=directory, adopt=False,
                                                           direct=False), self.limits)  # fmt: skip

    def is_empty(self) -> bool:
        """Nothing spooled waits for audit."""
        return self.files.empty()

    @property
    def reaching_audit(self) -> bool:
        """Whether audit answered the last attempt and nothing waits in the spool: emits go straight to it."""
        return self._sink_healthy and self.files.empty()

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
        """Stop: events already durable stay so; unshipped ones ship on the next start (or from a sibling
        process that adopts this slot)."""
        if self._stopping.is_set():
            return
        if self._sink_healthy and flush_timeout > 0:  # with audit unreachable, waiting would only delay shutdown
            self.flush(flush_timeout)
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=10)
        self.files.close()
        self._lock_file.close()
