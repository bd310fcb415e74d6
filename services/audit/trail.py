"""The audit trail as the service runs it: append with periodic signed checkpoints (each also a C2SP
signed note over the Merkle tree, published to a witness), paged queries, inclusion and consistency
proofs, verification over a range, and retention that signs what it prunes before dropping it.

Pure core: it talks to an `AuditStore` and a `CheckpointSigner`, never to gRPC or a database driver.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from ztmesh.audit import canonical, merkle, note
from ztmesh.audit.chain import (
    Checkpoint,
    CheckpointKind,
    CheckpointSigner,
    CheckpointVerifier,
    Problem,
    VerifyReport,
    Walk,
    verify_links,
    walk_here,
)
from ztmesh.audit.checkpoint_keys import NoteKeys
from ztmesh.audit.errors import (
    BatchTooLarge,
    CheckpointError,
    InvalidQuery,
    InvalidRange,
    PruneRefused,
    RecordNotFound,
    StoreError,
)
from ztmesh.audit.proofs import ConsistencyProof, InclusionProof
from ztmesh.audit.record import EventV1
from ztmesh.audit.store import AppendResult, AuditStore, Clock, QueryFilter, utc_now
from ztmesh.audit.witness import DirectoryWitness, WitnessRefused
from ztmesh.mesh.auditing import uuid7

log = logging.getLogger(__name__)
MAX_PAGE = 1000


@dataclass(frozen=True)
class TrailSettings:
    checkpoint_every: int = 1000  # sign a checkpoint after this many new records…
    checkpoint_interval: float = 60.0  # …or after this many seconds with new records
    max_batch: int = 1000  # events per Append call
    retention: timedelta = field(default_factory=lambda: timedelta(days=7 * 366))
    default_page: int = 500


@dataclass(frozen=True)
class Page:
    records: list  # list[AuditRecord]
    next_token: str  # "" when there is nothing more


@dataclass(frozen=True)
class PruneResult:
    checkpoint: Checkpoint
    records_dropped: int


def _fingerprint(where: QueryFilter) -> str:
    body = json.dumps([where.start and where.start.isoformat(), where.end and where.end.isoformat(), where.service,
                       where.subject, where.action, where.outcome, where.newest_first, where.decision_id,
                       where.event_id])  # fmt: skip
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def encode_token(where: QueryFilter, after: int) -> str:
    raw = json.dumps({"after": after, "filter": _fingerprint(where)}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(where: QueryFilter, token: str) -> int:
    if not token:
        return 0
    try:
        body = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        after = int(body["after"])
        same_filter = body["filter"] == _fingerprint(where)
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidQuery("page_token is not a token returned by Query") from None
    if not same_filter:
        raise InvalidQuery("page_token belongs to a query with other filters or order")
    return after


class _Write:
    """One caller's append waiting in the group commit."""

    __slots__ = ("events", "emitter", "done", "results", "error", "future")

    def __init__(self, events: Sequence[EventV1], emitter: str) -> None:
        self.events, self.emitter = events, emitter
        self.done = False
        self.results: list[AppendResult] = []
        self.error: BaseException | None = None
        self.future: asyncio.Future[list[AppendResult]] | None = None  # a caller on the event loop


def _write_group(store: AuditStore, group: list[_Write]) -> None:
    """Write `group` in one transaction; if it fails, each append alone, so each meets only its own error."""
    try:
        results = store.append_many([(w.events, w.emitter) for w in group])
    except Exception as exc:
        if len(group) == 1:
            group[0].error = exc
            return
        for w in group:
            try:
                w.results = store.append(w.events, w.emitter)
            except Exception as alone:
                w.error = alone
        return
    except BaseException as exc:  # interrupted: nobody may wait for a write that will not happen
        for w in group:
            w.error = exc
        raise
    for w, result in zip(group, results, strict=True):
        w.results = result


def _take(queue: list[_Write], max_events: int) -> list[_Write]:
    """The front of `queue` up to max_events (at least one append)."""
    count = 0
    for n, waiting in enumerate(queue):
        if n and count + len(waiting.events) > max_events:
            return queue[:n]
        count += len(waiting.events)
    return queue[:]


class GroupCommit:
    """Appends that arrive while one is being written are written together, in the next transaction:
    one commit - one fsync, one read of the tree's frontier - for all of them, instead of one each
    while the rest queue on the store's lock. The caller at the front of the queue writes for the
    callers behind it (up to `max_events`), the others wait for their own results (LevelDB's writer
    queue). A group that fails is written again one append at a time, so every caller gets its own
    answer: one emitter's refused event never fails another emitter's append.

    Callers on the event loop (`append_async`) queue apart: one task writes each of their groups in a
    worker thread, so the loop hands off to a thread once per group, not once per call."""

    def __init__(self, store: AuditStore, max_events: int = 4096) -> None:
        self.store = store
        self.max_events = max_events
        self._changed = threading.Condition()
        self._queue: list[_Write] = []
        self._loop_queue: list[_Write] = []
        self._loop_leader: asyncio.Task[None] | None = None

    def append(self, events: Sequence[EventV1], emitter: str) -> list[AppendResult]:
        mine = _Write(events, emitter)
        group: list[_Write] = []
        with self._changed:
            self._queue.append(mine)
            while not mine.done and self._queue[0] is not mine:
                self._changed.wait()
            if not mine.done:  # at the front: write for everyone queued behind, up to max_events
                group = _take(self._queue, self.max_events)
        if not mine.done:
            try:
                _write_group(self.store, group)
            finally:
                with self._changed:
                    for written in group:
                        written.done = True
                    del self._queue[: len(group)]
                    self._changed.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.results

    async def append_async(self, events: Sequence[EventV1], emitter: str) -> list[AppendResult]:
        loop = asyncio.get_running_loop()
        mine = _Write(events, emitter)
        mine.future = loop.create_future()
        self._loop_queue.append(mine)
        leader = self._loop_leader
        if leader is None or leader.done() or leader.get_loop() is not loop:
            self._loop_leader = loop.create_task(self._lead_loop())
        return await mine.future

    async def _lead_loop(self) -> None:
        while self._loop_queue:
            group = _take(self._loop_queue, self.max_events)
            del self._loop_queue[: len(group)]
            try:
                await asyncio.to_thread(_write_group, self.store, group)
            except BaseException as exc:  # the loop is stopping: nobody may wait for an answer
                left, self._loop_queue = self._loop_queue, []
                for w in group + left:
                    if w.future is not None and not w.future.done():
                        w.future.set_exception(w.error or exc)
                raise
            for w in group:
                if w.future is None or w.future.done():  # its caller gave up: nothing to tell
                    continue
                if w.error is not None:
                    w.future.set_exception(w.error)
                else:
                    w.future.set_result(w.results)


class AuditTrail:
    def __init__(
        self,
        store: AuditStore,
        signer: CheckpointSigner,
        verifier: CheckpointVerifier,
        settings: TrailSettings | None = None,
        clock: Clock = utc_now,
        *,
        note_keys: NoteKeys | None = None,
        origin: str = "ztmesh.local/audit",
        witness: DirectoryWitness | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.verifier = verifier
        self.settings = settings or TrailSettings()
        self.clock = clock
        self.note_keys = note_keys
        self.origin = origin
        self.witness = witness
        self._checkpoint_lock = threading.Lock()
        self._commits = GroupCommit(store, max(4096, self.settings.max_batch))
        latest = self.latest_checkpoint()
        self._checkpointed = latest.sequence if latest else 0
        self._checkpointed_at = time.monotonic()

    # --- append -------------------------------------------------------------------------------------------

    def append(self, events: Sequence[EventV1], emitter: str = "") -> list[AppendResult]:
        if len(events) > self.settings.max_batch:
            raise BatchTooLarge(len(events), self.settings.max_batch)
        results = self._commits.append(events, emitter)
        if self._checkpoint_due(results):
            self._checkpoint_after_append(results)
        return results

    async def append_async(self, events: Sequence[EventV1], emitter: str = "") -> list[AppendResult]:
        """`append` for a caller on the event loop; nothing blocking runs on the loop."""
        if len(events) > self.settings.max_batch:
            raise BatchTooLarge(len(events), self.settings.max_batch)
        results = await self._commits.append_async(events, emitter)
        if self._checkpoint_due(results):
            await asyncio.to_thread(self._checkpoint_after_append, results)
        return results

    def _checkpoint_due(self, results: Sequence[AppendResult]) -> bool:
        newest = max((r.sequence for r in results), default=0)
        return newest - self._checkpointed >= self.settings.checkpoint_every

    def _checkpoint_after_append(self, results: Sequence[AppendResult]) -> None:
        # Every audit process on the database counts from the log's newest checkpoint, not only its own:
        # otherwise each of them signs one per `checkpoint_every` records. (Trusted ones only: a forged row
        # must not stop the signing.)
        try:
            latest = self.latest_checkpoint()
            if latest is not None and latest.sequence > self._checkpointed:
                self._checkpointed = latest.sequence
                if not self._checkpoint_due(results):
                    return
            self.checkpoint()
        except (CheckpointError, StoreError) as exc:  # the records are stored; the background job signs later
            log.warning("audit checkpoint postponed: %s", exc)

    def checkpoint(self, *, only_if_new: bool = True) -> Checkpoint | None:
        """Sign the current head (skipped when nothing was recorded since the last checkpoint)."""
        with self._checkpoint_lock:
            head = self.store.head()
            if head.sequence == 0 or (only_if_new and head.sequence <= self._checkpointed):
                return None
            root, signed_note = self._tree_head(head.sequence)
            cp = Checkpoint(
                checkpoint_id=uuid7(), kind=CheckpointKind.HEAD, sequence=head.sequence, head_hash=head.hash,
                time=canonical.format_time(self.clock()), key_id=self.signer.key_id, algorithm=self.signer.algorithm,
                tree_root=root, note=signed_note,
            ).signed(self.signer)  # fmt: skip
            self.store.add_checkpoint(cp)
            self._checkpointed = head.sequence
            self._checkpointed_at = time.monotonic()
            self._publish(cp)
            return cp

    def _tree_head(self, size: int) -> tuple[bytes, str]:
        """The Merkle root of records 1..size and its signed note ("" without note keys)."""
        root = merkle.tree_root(size, self.store)
        if self.note_keys is None:
            return root, ""
        return root, self.note_keys.sign(note.TreeHead(self.origin, size, root))

    def _publish(self, cp: Checkpoint) -> None:
        """Hand a new checkpoint to the witness. A refusal means the database no longer extends what was
        witnessed: said as loudly as we can; the trail keeps recording (records are still evidence)."""
        if self.witness is None or not cp.note:
            return
        try:
            self.witness.publish(cp.note, lambda old, new: merkle.consistency_proof(old, new, self.store))
        except WitnessRefused as exc:
            log.critical("audit witness REFUSED checkpoint %d: %s", cp.sequence, exc)
        except (OSError, note.NoteError, merkle.ProofError) as exc:
            log.error("audit witness: could not publish checkpoint %d: %s", cp.sequence, exc)

    def note_verifiers(self) -> list[note.NoteVerifier]:
        return self.note_keys.verifiers() if self.note_keys is not None else []

    def open_checkpoint(self, signed: str) -> note.TreeHead:
        """What a checkpoint note held elsewhere states, once its signature is one of this log's."""
        try:
            head = note.parse_tree_head(note.open_note(signed, self.note_verifiers()).text)
        except note.NoteError as exc:
            raise InvalidQuery(f"witnessed checkpoint: {exc}") from None
        if head.origin != self.origin:
            raise InvalidQuery(f"witnessed checkpoint is of log {head.origin!r}, not {self.origin!r}")
        return head

    # --- proofs -------------------------------------------------------------------------------------------

    def _trusted(self, cp: Checkpoint) -> bool:
        """A checkpoint row counts only if this log's key signed it: the service's database role can
        insert rows, not signatures (a forged row must neither be served nor hold back signing)."""
        if not cp.signature_valid(self.verifier):
            log.error(
                "audit checkpoint %s (sequence %d) has no valid signature: ignored", cp.checkpoint_id, cp.sequence
            )
            return False
        return True

    def checkpoint_at(self, tree_size: int = 0) -> Checkpoint | None:
        """The newest validly signed checkpoint with a signed note, or the one of exactly `tree_size` records."""
        if not tree_size:  # the usual question (every proof asks it): the newest row answers it, one read
            latest = self.store.latest_checkpoint()
            if latest is not None and latest.note and self._trusted(latest):
                return latest
        noted = [cp for cp in self.store.checkpoints() if cp.note and (not tree_size or cp.sequence == tree_size)]
        return next((cp for cp in reversed(noted) if self._trusted(cp)), None)

    def _covering_checkpoint(self, sequence: int, tree_size: int) -> Checkpoint:
        cp = self.checkpoint_at(tree_size)
        if tree_size and cp is None:
            raise RecordNotFound(f"no signed checkpoint of tree size {tree_size}")
        if cp is None or cp.sequence < sequence:
            cp = self.checkpoint(only_if_new=True) or self.checkpoint_at()  # sign one now that covers it
        if cp is None or cp.sequence < sequence or not cp.note:
            raise CheckpointError(f"no signed checkpoint covers record {sequence} yet")
        return cp

    def prove_inclusion(self, *, event_id: str = "", decision_id: str = "", tree_size: int = 0) -> InclusionProof:
        """Where a record sits in a signed tree, by event id or decision id (the decision's record)."""
        if bool(event_id) == bool(decision_id):
            raise InvalidQuery("give exactly one of event_id and decision_id")
        where = QueryFilter(event_id=event_id.lower(), decision_id=decision_id, newest_first=False)
        found = self.store.query(where, 0, 1)
        if not found:
            raise RecordNotFound(f"no audit record with {'event id' if event_id else 'decision id'} "
                                 f"{event_id or decision_id!r}")  # fmt: skip
        record = found[0]
        cp = self._covering_checkpoint(record.sequence, tree_size)
        if record.sequence > cp.sequence:
            raise InvalidQuery(f"record {record.sequence} is newer than the checkpoint of tree size {cp.sequence}")
        path = merkle.inclusion_proof(record.sequence - 1, cp.sequence, self.store)
        return InclusionProof(cp.note, record.sequence, record.canonical(), tuple(path))

    def prove_consistency(self, old_size: int, new_size: int = 0) -> ConsistencyProof:
        """That the tree of `new_size` records (0 = the newest checkpoint) extends the one of `old_size`."""
        if new_size == 0:
            latest = self.checkpoint_at()
            new_size = latest.sequence if latest else 0
        head = self.store.head().sequence
        if not 0 < old_size <= new_size <= head:
            raise InvalidRange(f"sizes must satisfy 0 < old ({old_size}) <= new ({new_size}) <= log size ({head})")
        path = merkle.consistency_proof(old_size, new_size, self.store)
        return ConsistencyProof(
            self.origin, old_size, merkle.tree_root(old_size, self.store), new_size,
            merkle.tree_root(new_size, self.store), tuple(path),
        )  # fmt: skip

    def latest_checkpoint(self) -> Checkpoint | None:
        """The newest validly signed checkpoint (normally the newest row; older ones only past forged rows)."""
        latest = self.store.latest_checkpoint()
        if latest is None or self._trusted(latest):
            return latest
        return next((cp for cp in reversed(self.store.checkpoints()) if self._trusted(cp)), None)

    def run_checkpoints(self, stopping: threading.Event) -> None:
        """Background job: a checkpoint every `checkpoint_interval` seconds while records keep coming."""
        while not stopping.wait(min(self.settings.checkpoint_interval, 1.0)):
            if time.monotonic() - self._checkpointed_at >= self.settings.checkpoint_interval:
                try:
                    self.checkpoint()
                except Exception:  # a signing outage must not kill the job; the next tick retries
                    log.exception("audit checkpoint failed")
                    self._checkpointed_at = time.monotonic()

    # --- query --------------------------------------------------------------------------------------------

    def query(self, where: QueryFilter, page_token: str = "", page_size: int = 0) -> Page:
        if page_size < 0 or page_size > MAX_PAGE:
            raise InvalidQuery(f"page_size must be 0 (default {self.settings.default_page}) to {MAX_PAGE}")
        if where.start and where.end and where.start >= where.end:
            raise InvalidQuery("start_time must be before end_time")
        size = page_size or self.settings.default_page
        after = decode_token(where, page_token)
        records = self.store.query(where, after, size + 1)
        more = len(records) > size
        records = records[:size]
        return Page(records, encode_token(where, records[-1].sequence) if more else "")

    # --- verify -------------------------------------------------------------------------------------------

    def verify(
        self, from_sequence: int = 0, to_sequence: int = 0, witnessed: Sequence[tuple[str, note.TreeHead]] = ()
    ) -> VerifyReport:
        """Recompute the chain and the Merkle tree and check every checkpoint; also against the latest
        witnessed checkpoint and any `witnessed` tree heads held elsewhere."""
        held = list(witnessed)
        if self.witness is not None:
            latest = self.witness.latest()
            if latest is not None:
                held.append((f"the witnessed checkpoint in {self.witness.directory}", latest[1]))
        from ztmesh.audit.parallel_verify import verify_store_parallel  # it builds on verify_store below

        return verify_store_parallel(
            self.store, self.verifier, from_sequence, to_sequence,
            note_verifiers=self.note_verifiers() if self.note_keys is not None else None, witnessed=held,
        )  # fmt: skip

    # --- retention ----------------------------------------------------------------------------------------

    def prune(self) -> PruneResult | None:
        """Drop whole partitions older than the retention, after checking their chain and signing a PRUNE
        checkpoint that anchors the first record kept. Returns None when nothing is old enough."""
        cutoff = self.clock() - self.settings.retention
        plan = self.store.plan_prune(cutoff)
        if plan is None:
            return None
        report = verify_store(self.store, self.verifier, plan.first_kept, plan.through_sequence)
        if not report.ok:
            raise PruneRefused(f"retention stopped: the records it would drop do not verify ({report}); kept them")
        head = self.store.head()
        root, signed_note = self._tree_head(head.sequence)
        cp = Checkpoint(
            checkpoint_id=uuid7(), kind=CheckpointKind.PRUNE, sequence=head.sequence, head_hash=head.hash,
            time=canonical.format_time(self.clock()), key_id=self.signer.key_id, algorithm=self.signer.algorithm,
            pruned_through_sequence=plan.through_sequence, pruned_through_hash=plan.through_hash,
            pruned_before=canonical.format_time(plan.cutoff), tree_root=root, note=signed_note,
        ).signed(self.signer)  # fmt: skip
        self.store.add_checkpoint(cp)
        dropped = self.store.prune(plan)
        log.info("audit retention dropped records %d..%d", plan.first_kept, plan.through_sequence)
        return PruneResult(cp, dropped)


def verify_store(
    store: AuditStore,
    verifier: CheckpointVerifier | None,
    from_sequence: int = 0,
    to_sequence: int = 0,
    *,
    note_verifiers: Sequence[note.NoteVerifier] | None = None,
    witnessed: Sequence[tuple[str, note.TreeHead]] = (),
    walk_for: Callable[[int], Walk] | None = None,
) -> VerifyReport:
    """Recompute the chain (and the Merkle tree) over from..to (0 = first kept / head) and check the
    checkpoints that bear on it, and any tree heads `witnessed` outside the database. `walk_for(end)`
    chooses how the records are walked (parallel_verify spreads them over processes)."""
    if from_sequence < 0 or to_sequence < 0:
        raise InvalidRange("sequence numbers are positive")
    if to_sequence and from_sequence > to_sequence:
        raise InvalidRange(f"from_sequence {from_sequence} is after to_sequence {to_sequence}")
    first, last = store.bounds()
    cps = store.checkpoints()
    if last == 0:
        first = last = max((cp.pruned_through_sequence for cp in cps), default=0)
        first += 1
    start = max(from_sequence or first, first)
    end = min(to_sequence or last, last)
    relevant = [
        cp for cp in cps
        if start <= cp.sequence <= end or cp.sequence > last
        or (cp.kind is CheckpointKind.PRUNE and cp.pruned_through_sequence == first - 1)
    ]  # fmt: skip
    anchor = None if start <= first else store.hash_at(start - 1)
    links = store.links(start, end) if end >= start else iter(())
    # The tree of records before `start`, from the stored nodes: trusted only because what is rebuilt
    # on top of it must reproduce the signed roots (a forged frontier cannot).
    try:
        tree_from = merkle.frontier_from(start - 1, store) if start > 1 else merkle.Frontier()
    except merkle.ProofError as exc:
        if witnessed or any(cp.tree_root for cp in cps):
            # Signed or witnessed roots exist, so the nodes did too: deleting them must not switch the
            # tree checks off (it would let a rewrite behind a prune anchor pass).
            return VerifyReport(False, 0, 0, start, Problem.TREE_MISMATCH,
                                f"the Merkle tree before record {start} is gone from the database ({exc}): "
                                "the log's tree was tampered with")  # fmt: skip
        tree_from = None  # a log whose checkpoints all predate the tree: chain checks only
    return verify_links(
        links, start=start, end=end, anchor=anchor, checkpoints=relevant, verifier=verifier, first_kept=first,
        head_sequence=last, tree_from=tree_from, note_verifiers=note_verifiers,
        witnessed=witnessed, walk=walk_for(end) if walk_for is not None else walk_here,
    )  # fmt: skip
