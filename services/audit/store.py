"""The `AuditStore` seam (PostgreSQL, SQLite) and what the adapters share: query filters, row mapping,
idempotent batch planning and the retention plan.

A store is the only place that serializes appends: it reads the chain head and extends it inside one
lock (PostgreSQL advisory lock, SQLite's write lock), so concurrent appenders never fork the chain.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from ztmesh.audit import canonical, merkle
from ztmesh.audit.chain import ChainHead, ChainLink, Checkpoint, CheckpointKind, Extension, extend_into_tree
from ztmesh.audit.errors import DuplicateInBatch, InvalidEvent
from ztmesh.audit.merkle import NodeId
from ztmesh.audit.record import AuditRecord, EventV1, masked_json

Clock = Callable[[], datetime]
# No retention run drops records younger than this unless the database owner lowers it (pg_schema.py,
# SQLite's audit_meta): the product's default retention, 7 years (AuditSettings.audit_retention_days).
DEFAULT_MIN_RETENTION = timedelta(days=2557)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class AppendResult:
    event_id: str
    sequence: int
    duplicate: bool  # stored by an earlier call (a retry): nothing new was written


@dataclass(frozen=True)
class QueryFilter:
    start: datetime | None = None  # event time, inclusive
    end: datetime | None = None  # event time, exclusive
    service: str = ""
    subject: str = ""
    action: str = ""
    outcome: str = ""
    decision_id: str = ""
    newest_first: bool = True  # by sequence, i.e. the order audit recorded them
    event_id: str = ""


@dataclass(frozen=True)
class PrunePlan:
    """Records 1..through_sequence were recorded before `cutoff` (a partition boundary) and may go."""

    cutoff: datetime
    through_sequence: int
    through_hash: bytes
    first_kept: int  # first sequence currently stored


class AuditStore(Protocol):
    def append(self, events: Sequence[EventV1], emitter: str) -> list[AppendResult]:
        """Store new events after the head; events already stored (by id) are reported, not repeated."""
        ...

    def append_many(self, batches: Sequence[tuple[Sequence[EventV1], str]]) -> list[list[AppendResult]]:
        """`append` of each (events, emitter) in turn, all in one transaction: one commit for all of them,
        or none of them stored."""
        ...

    def head(self) -> ChainHead: ...

    def bounds(self) -> tuple[int, int]:
        """(first stored sequence, last stored sequence); (0, 0) when empty."""
        ...

    def hash_at(self, sequence: int) -> bytes | None: ...

    def links(self, start: int, end: int) -> Iterator[ChainLink]:
        """Stored records start..end ascending, as the verifier needs them."""
        ...

    def query(self, where: QueryFilter, after_sequence: int, limit: int) -> list[AuditRecord]:
        """Up to `limit` records matching `where`, continuing past `after_sequence` (0 = from the start)."""
        ...

    def add_checkpoint(self, checkpoint: Checkpoint) -> None: ...

    def checkpoints(self) -> list[Checkpoint]:
        """All checkpoints, by sequence then time."""
        ...

    def latest_checkpoint(self) -> Checkpoint | None: ...

    def plan_prune(self, cutoff: datetime) -> PrunePlan | None:
        """What retention at `cutoff` would drop (whole partitions only), or None if nothing."""
        ...

    def prune(self, plan: PrunePlan) -> int:
        """Drop what `plan` covers; a PRUNE checkpoint for it must already be stored. Returns records dropped."""
        ...

    def read_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        """Stored Merkle tree nodes (merkle.py), in the order asked; a missing one raises ProofError."""
        ...

    def close(self) -> None: ...


# --- shared by the adapters ---------------------------------------------------------------------------------

RECORD_COLUMNS = (
    "sequence, recorded_at, event_id, time, service, emitter, caller, subject, action, resource, outcome, "
    "decision_id, trace_id, details, masked, prev_hash, hash"
)
CHECKPOINT_COLUMNS = (
    "checkpoint_id, kind, sequence, head_hash, time, key_id, key_version, algorithm, "
    "pruned_through_sequence, pruned_through_hash, pruned_before, signature, tree_root, note"
)


def record_from_row(row: Sequence[Any]) -> AuditRecord:
    """A record from RECORD_COLUMNS with times already as canonical text."""
    (sequence, recorded_at, event_id, time, service, emitter, caller, subject, action, resource, outcome,
     decision_id, trace_id, details, masked, prev_hash, digest) = row  # fmt: skip
    event = EventV1(
        event_id=str(event_id), time=time, service=service, action=action, outcome=outcome, caller=caller,
        subject=subject, resource=resource, details=details, masked=tuple(json.loads(masked)),
        decision_id=decision_id, trace_id=trace_id,
    )  # fmt: skip
    return AuditRecord(event, int(sequence), recorded_at, emitter, bytes(prev_hash), bytes(digest))


def record_params(record: AuditRecord) -> tuple[Any, ...]:
    e = record.event
    return (
        record.sequence, record.recorded_at, e.event_id, e.time, e.service, record.emitter, e.caller, e.subject,
        e.action, e.resource, e.outcome, e.decision_id, e.trace_id, e.details, masked_json(e.masked),
        record.prev_hash, record.hash,
    )  # fmt: skip


def json_list(items: Sequence[str]) -> str:
    return canonical.dumps(list(items), plain=True)


def checkpoint_params(cp: Checkpoint) -> tuple[Any, ...]:
    return (
        cp.checkpoint_id, cp.kind.value, cp.sequence, cp.head_hash, cp.time, cp.key_id, cp.key_version,
        cp.algorithm, cp.pruned_through_sequence, cp.pruned_through_hash, cp.pruned_before, cp.signature,
        cp.tree_root, cp.note,
    )  # fmt: skip


def checkpoint_from_row(row: Sequence[Any]) -> Checkpoint:
    (checkpoint_id, kind, sequence, head_hash, time, key_id, key_version, algorithm, pruned_seq, pruned_hash,
     pruned_before, signature, tree_root, note) = row  # fmt: skip
    return Checkpoint(
        checkpoint_id=str(checkpoint_id), kind=CheckpointKind(kind), sequence=int(sequence),
        head_hash=bytes(head_hash), time=time, key_id=key_id, algorithm=algorithm,
        pruned_through_sequence=int(pruned_seq), pruned_through_hash=bytes(pruned_hash),
        pruned_before=pruned_before, key_version=int(key_version), signature=bytes(signature),
        tree_root=bytes(tree_root), note=note,
    )  # fmt: skip


def same_event(a: EventV1, b: EventV1) -> bool:
    """Whether a retried event is the one stored (the emitter's `time` and content all match)."""
    return a == b


@dataclass
class BatchPlan:
    """Which events of a batch are new, in order, and what to answer for each input position."""

    new: list[EventV1]
    known: dict[str, int]  # event_id -> stored sequence


def plan_batch(events: Sequence[EventV1], stored: dict[str, tuple[int, EventV1]]) -> BatchPlan:
    """Drop events already stored (same id and content) or repeated within the batch.

    The same id with different content is refused: a retry never changes what was recorded."""
    seen: dict[str, EventV1] = {}
    new: list[EventV1] = []
    for event in events:
        if event.event_id in stored:
            if not same_event(stored[event.event_id][1], event):
                raise InvalidEvent("event_id", "is already stored with different contents", event.event_id)
            continue
        if event.event_id in seen:
            if seen[event.event_id] != event:
                raise DuplicateInBatch(event.event_id)
            continue
        seen[event.event_id] = event
        new.append(event)
    return BatchPlan(new, {k: v[0] for k, v in stored.items()})


class AppendTip:
    """Where one transaction's appends go next (`AuditStore.append_many`): the chain head, the events already
    stored among the transaction's ids, and the tree's frontier - each read once, under the store's append
    lock, and carried from one batch to the next, not read again for every batch of a group."""

    def __init__(
        self, head: ChainHead, stored: dict[str, tuple[int, EventV1]],
        read_nodes: Callable[[Sequence[NodeId]], list[bytes]],
    ) -> None:  # fmt: skip
        self.head, self.stored = head, stored
        self._read_nodes = read_nodes
        self._frontier: merkle.Frontier | None = None  # read when the first new leaf needs it

    def extend(
        self, events: Sequence[EventV1], recorded_at: str, emitter: str,
        encoded: Mapping[str, tuple[bytes, bytes, bytes]] | None = None,
    ) -> tuple[BatchPlan, list[AuditRecord], list[tuple[NodeId, bytes]]]:  # fmt: skip
        """The batch's plan, its new records after the head and the tree nodes they complete; the tip then
        stands after them."""
        plan, extension = self.extend_hashed(events, recorded_at, emitter, encoded)
        return (plan, extension.records(), extension.nodes) if extension else (plan, [], [])

    def extend_hashed(
        self, events: Sequence[EventV1], recorded_at: str, emitter: str,
        encoded: Mapping[str, tuple[bytes, bytes, bytes]] | None = None,
    ) -> tuple[BatchPlan, Extension | None]:  # fmt: skip
        """`extend` with the new records as an Extension (None when every event was stored already)."""
        plan = plan_batch(events, self.stored)
        if not plan.new:
            return plan, None
        if self._frontier is None:
            self._frontier = merkle.frontier_from(self.head.sequence, self._read_nodes)
        extension = extend_into_tree(self.head, plan.new, recorded_at, emitter, encoded, self._frontier)
        first = self.head.sequence + 1
        self.head, self._frontier = extension.last, extension.frontier
        self.stored.update((e.event_id, (first + i, e)) for i, e in enumerate(plan.new))
        return plan, extension


def results_for(events: Sequence[EventV1], plan: BatchPlan, fresh: Mapping[str, int]) -> list[AppendResult]:
    """Each event's result, from the plan and the sequence numbers its new records (`fresh`) got."""
    out = []
    reported: set[str] = set()
    for event in events:
        eid = event.event_id
        if eid in fresh and eid not in reported:
            out.append(AppendResult(eid, fresh[eid], False))
            reported.add(eid)
        else:
            out.append(AppendResult(eid, plan.known.get(eid) or fresh[eid], True))
    return out


def floor_time(moment: datetime, unit: str) -> datetime:
    """Start of the partition holding `moment` (`unit` is month or day)."""
    moment = moment.astimezone(UTC)
    if unit == "day":
        return moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def next_partition(start: datetime, unit: str) -> datetime:
    if unit == "day":
        return start + timedelta(days=1)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
