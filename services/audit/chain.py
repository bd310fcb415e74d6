"""The hash chain: extending it with a batch, verifying a stretch of it, and signed checkpoints.

Pure logic over records and `ChainLink`s (sequence, stored hashes, canonical bytes); the stores feed
it rows, so PostgreSQL, SQLite and the offline verifier share one definition of "intact".
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from ztmesh.audit import merkle, note
from ztmesh.audit.merkle import leaf_hash
from ztmesh.audit.record import GENESIS_HASH, AuditRecord, EventV1, chain_hash, join_record, record_parts

try:  # native/audit, built by scripts/install-deps.sh and the image; without it the hashing is Python's
    from ztmesh_audit_native import append_records as native_append_records
except ImportError:  # pragma: no cover - the tests require the module under CI
    native_append_records = None  # type: ignore[assignment]

CHECKPOINT_TYPE = "ztmesh.audit.checkpoint.v1"
_REORDER_LOOKAHEAD = 4096  # how far ahead a misplaced record's predecessor is searched for


@dataclass(frozen=True)
class ChainHead:
    """The last record of the chain (or the anchor left by pruning, or genesis)."""

    sequence: int = 0
    hash: bytes = GENESIS_HASH
    recorded_at: str = ""  # canonical time of the head record; "" before the first record


def extend(head: ChainHead, events: Sequence[EventV1], recorded_at: str, emitter: str) -> list[AuditRecord]:
    """Records for `events` appended after `head`: consecutive sequence numbers, each linked to the last.

    `recorded_at` never goes backwards along the chain (a clock step back is clamped to the head's
    time), which keeps time partitions holding contiguous sequence ranges."""
    return extend_with_leaves(head, events, recorded_at, emitter)[0]


def extend_with_leaves(
    head: ChainHead, events: Sequence[EventV1], recorded_at: str, emitter: str,
    encoded: Mapping[str, tuple[bytes, bytes, bytes]] | None = None,
) -> tuple[list[AuditRecord], list[bytes]]:  # fmt: skip
    """`extend`, plus each record's Merkle leaf hash (record `sequence` is leaf `sequence - 1`), from the
    one canonical encoding of the record that the chain hash uses too. `encoded`: each event's
    `record_parts` by event id, made before the store's append lock, so under it only the sequence
    and the time are joined in."""
    when = max(recorded_at, head.recorded_at)
    records, leaves = [], []
    prev, sequence = head.hash, head.sequence
    for event in events:
        sequence += 1
        parts = encoded[event.event_id] if encoded is not None else record_parts(event, emitter)
        body = join_record(parts, sequence, when)
        digest = chain_hash(prev, body)
        records.append(AuditRecord(event, sequence, when, emitter, prev, digest))
        leaves.append(leaf_hash(body))
        prev = digest
    return records, leaves


class Extension:
    """Records appended after `head` (`extend_into_tree`), hashes first: the PostgreSQL store writes their
    rows from `hashes` and never needs the records' Python objects (~2 us an event); `records()` makes them."""

    __slots__ = ("head", "events", "when", "emitter", "hashes", "nodes", "frontier", "_records")

    def __init__(
        self, head: ChainHead, events: Sequence[EventV1], when: str, emitter: str, hashes: list[bytes],
        nodes: list[tuple[merkle.NodeId, bytes]], frontier: merkle.Frontier, records: list[AuditRecord] | None = None,
    ) -> None:  # fmt: skip
        self.head, self.events, self.when, self.emitter = head, events, when, emitter
        self.hashes, self.nodes, self.frontier = hashes, nodes, frontier
        self._records = records

    @property
    def last(self) -> ChainHead:
        return ChainHead(self.head.sequence + len(self.hashes), self.hashes[-1], self.when)

    def records(self) -> list[AuditRecord]:
        if self._records is None:
            links = zip(self.events, [self.head.hash, *self.hashes], self.hashes, strict=False)
            first = self.head.sequence
            self._records = [
                AuditRecord(e, first + i, self.when, self.emitter, p, h) for i, (e, p, h) in enumerate(links, 1)
            ]
        return self._records


def extend_into_tree(
    head: ChainHead, events: Sequence[EventV1], recorded_at: str, emitter: str,
    encoded: Mapping[str, tuple[bytes, bytes, bytes]] | None, frontier: merkle.Frontier,
) -> Extension:  # fmt: skip
    """`extend_with_leaves` and `merkle.append_leaves` in one step (`events` not empty): the records, the
    tree's new frontier and the nodes their leaves complete. Hashed natively (native/audit/src/append.rs,
    without the GIL) when the module is built and the records come encoded: this runs under the store's
    append lock."""
    if native_append_records is None or encoded is None:
        records, leaves = extend_with_leaves(head, events, recorded_at, emitter, encoded)
        grown, nodes = merkle.append_leaves(frontier, leaves)
        hashes = [r.hash for r in records]
        return Extension(head, events, records[0].recorded_at, emitter, hashes, nodes, grown, records)
    when = max(recorded_at, head.recorded_at)
    hashes, nodes, edge = native_append_records(
        head.hash, head.sequence, when, [encoded[e.event_id] for e in events], list(frontier.nodes)
    )
    grown = merkle.Frontier(frontier.size + len(events), tuple(edge))
    return Extension(head, events, when, emitter, hashes, nodes, grown)


# --- checkpoints --------------------------------------------------------------------------------------------


class CheckpointKind(enum.Enum):
    HEAD = "head"  # periodic: every N events or T seconds
    PRUNE = "prune"  # written before retention drops records; anchors the first record kept


@dataclass(frozen=True)
class Signature:
    key_id: str
    key_version: int
    algorithm: str
    value: bytes


class CheckpointSigner(Protocol):
    """Signs checkpoint payloads (ML-DSA-65: the keys service, or a local key for the embedded default)."""

    @property
    def key_id(self) -> str: ...

    @property
    def algorithm(self) -> str: ...

    def sign(self, payload: bytes) -> Signature: ...


class CheckpointVerifier(Protocol):
    def verify(self, payload: bytes, signature: Signature) -> bool: ...


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement: the chain had `head_hash` at `sequence` at `time`.

    A PRUNE checkpoint also records that records 1..pruned_through_sequence (recorded before
    `pruned_before`) were dropped, and the hash of the last of them: the first kept record's prev_hash."""

    checkpoint_id: str
    kind: CheckpointKind
    sequence: int
    head_hash: bytes
    time: str
    key_id: str
    algorithm: str
    pruned_through_sequence: int = 0
    pruned_through_hash: bytes = b""
    pruned_before: str = ""
    key_version: int = 0
    signature: bytes = b""
    # The Merkle tree of records 1..sequence, and the C2SP signed note stating it (note.py): the
    # checkpoint as anyone outside ztmesh verifies it. Empty in checkpoints written before the tree.
    tree_root: bytes = b""
    note: str = ""

    def payload(self) -> bytes:
        """What is signed: JCS of every field but the signature, key version (known only once signed) and
        the note (signed on its own); `tree_root` only when set, so older checkpoints still verify."""
        body: dict[str, object] = {
            "algorithm": self.algorithm, "checkpoint_id": self.checkpoint_id, "head_hash": self.head_hash.hex(),
            "key_id": self.key_id, "kind": self.kind.value, "pruned_before": self.pruned_before,
            "pruned_through_hash": self.pruned_through_hash.hex(),
            "pruned_through_sequence": self.pruned_through_sequence, "sequence": self.sequence,
            "time": self.time, "type": CHECKPOINT_TYPE,
        }  # fmt: skip
        if self.tree_root:
            body["tree_root"] = self.tree_root.hex()
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def signed(self, signer: CheckpointSigner) -> Checkpoint:
        unsigned = replace(self, key_id=signer.key_id, algorithm=signer.algorithm)
        sig = signer.sign(unsigned.payload())
        return replace(unsigned, key_version=sig.key_version, signature=sig.value)

    def signature_valid(self, verifier: CheckpointVerifier) -> bool:
        sig = Signature(self.key_id, self.key_version, self.algorithm, self.signature)
        return bool(self.signature) and verifier.verify(self.payload(), sig)


# --- verification -------------------------------------------------------------------------------------------


class Problem(enum.Enum):
    NONE = "none"
    HASH_MISMATCH = "hash_mismatch"  # a record's content does not hash to its stored hash
    PREV_HASH_MISMATCH = "prev_hash_mismatch"  # a record does not link to its predecessor
    GAP = "gap"  # sequence numbers are missing
    REORDERED = "reordered"  # a record sits where another belongs (swapped or renumbered)
    DUPLICATE = "duplicate"  # a sequence number is stored twice
    CHECKPOINT_SIGNATURE = "checkpoint_signature"  # a checkpoint's signature does not verify
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"  # a signed head hash differs from the chain's
    TRUNCATED = "truncated"  # a checkpoint covers records that are no longer stored
    ANCHOR = "anchor"  # the first kept record has no valid genesis or prune checkpoint before it
    TREE_MISMATCH = "tree_mismatch"  # a signed tree root differs from the Merkle tree of the records


@dataclass(frozen=True, slots=True)
class ChainLink:
    """One stored record as the verifier needs it."""

    sequence: int
    prev_hash: bytes
    hash: bytes
    canonical: bytes


@dataclass(frozen=True)
class VerifyReport:
    ok: bool
    records_checked: int
    checkpoints_checked: int
    first_bad_sequence: int = 0
    problem: Problem = Problem.NONE
    detail: str = ""
    head: ChainHead = field(default_factory=ChainHead)

    def __str__(self) -> str:
        if self.ok:
            return f"chain intact: {self.records_checked} records, {self.checkpoints_checked} checkpoints verified"
        return f"chain BROKEN at sequence {self.first_bad_sequence} ({self.problem.value}): {self.detail}"


@dataclass
class _Failure:
    sequence: int
    problem: Problem
    detail: str


Failure = _Failure  # what a walk reports (parallel_verify.py walks in several processes)


def _note_problem(cp: Checkpoint, verifiers: Sequence[note.NoteVerifier]) -> str:
    """Why a checkpoint's signed note does not stand (empty when it does, or when it predates notes)."""
    if not cp.note and not cp.tree_root:
        return ""
    try:
        head = note.parse_tree_head(note.open_note(cp.note, verifiers).text)
    except note.NoteError as exc:
        return f"checkpoint {cp.checkpoint_id} (sequence {cp.sequence}): its signed note does not verify: {exc}"
    if head.size != cp.sequence or head.root != cp.tree_root:
        return f"checkpoint {cp.checkpoint_id}: its signed note states size {head.size}, not {cp.sequence}"
    return ""


def _links_from(records: Iterable[AuditRecord]) -> Iterator[ChainLink]:
    for r in records:
        yield ChainLink(r.sequence, r.prev_hash, r.hash, r.canonical())


def verify_records(records: Iterable[AuditRecord], **kwargs: object) -> VerifyReport:
    """`verify_links` over records in memory."""
    return verify_links(_links_from(records), **kwargs)  # type: ignore[arg-type]


def _classify_link_break(link: ChainLink, expected: int, ahead: Iterator[ChainLink]) -> _Failure:
    """Why `link` (found where `expected` belongs) does not link to the chain before it."""
    for _, later in zip(range(_REORDER_LOOKAHEAD), ahead, strict=False):
        if later.hash == link.prev_hash:
            return _Failure(
                expected, Problem.REORDERED,
                f"record {expected} follows record {later.sequence} in the chain: records were swapped or renumbered",
            )  # fmt: skip
    return _Failure(
        expected, Problem.PREV_HASH_MISMATCH,
        f"record {expected}'s prev_hash does not equal record {expected - 1}'s hash: "
        f"record {expected - 1} or {expected} was altered",
    )  # fmt: skip


@dataclass(frozen=True)
class TreeCheck:
    """Rebuild the Merkle tree while walking, from the tree of records 1..start-1 (`frontier`), and
    compare it with signed roots: `roots` maps a tree size to (what signed it, the root it states)."""

    frontier: merkle.Frontier
    roots: dict[int, list[tuple[str, bytes]]]


def _walk(
    links: Iterator[ChainLink],
    start: int,
    anchor: bytes,
    checkpoints: dict[int, list[Checkpoint]],
    tree: TreeCheck | None = None,
) -> tuple[int, bytes, _Failure | None]:
    """Walk the chain from sequence `start` whose predecessor hash is `anchor`.

    Returns (records checked, hash of the last good record, first failure or None)."""
    expected, prev, count = start, anchor, 0
    running = merkle.RunningTree(tree.frontier) if tree is not None else None
    roots = tree.roots if tree is not None else {}
    for link in links:
        if link.sequence != expected:
            if link.sequence < expected:
                return (
                    count,
                    prev,
                    _Failure(link.sequence, Problem.DUPLICATE, f"sequence {link.sequence} is stored more than once"),
                )
            missing = f"{expected}" if link.sequence == expected + 1 else f"{expected}..{link.sequence - 1}"
            return count, prev, _Failure(expected, Problem.GAP, f"record(s) {missing} are missing (deleted?)")
        if link.prev_hash != prev:
            return count, prev, _classify_link_break(link, expected, links)
        if hashlib.sha256(link.prev_hash + link.canonical).digest() != link.hash:
            return (
                count,
                prev,
                _Failure(
                    expected,
                    Problem.HASH_MISMATCH,
                    f"record {expected}'s content does not match its hash: it was altered",
                ),
            )
        for cp in checkpoints.get(expected, ()):
            if cp.head_hash != link.hash:
                return count, prev, _Failure(
                    expected, Problem.CHECKPOINT_MISMATCH,
                    f"checkpoint {cp.checkpoint_id} signed hash {cp.head_hash.hex()[:16]}… for record {expected}, "
                    f"but the chain has {link.hash.hex()[:16]}…: the chain up to it was rewritten",
                )  # fmt: skip
        if running is not None:
            running.append(merkle.leaf_hash(link.canonical))
            for who, root in roots.get(expected, ()):
                if running.root() != root:
                    return count, prev, _Failure(
                        expected, Problem.TREE_MISMATCH,
                        f"{who} states tree root {root.hex()[:16]}… for size {expected}, but the records make "
                        f"{running.root().hex()[:16]}…: the log up to record {expected} was rewritten",
                    )  # fmt: skip
        prev = link.hash
        expected += 1
        count += 1
    return count, prev, None


# How verify_links walks the records: (links, start, anchor, checkpoints by sequence, tree) ->
# (records checked, hash of the last good record, first failure or None). `_walk` in this process,
# or one that splits the range across processes (parallel_verify.py) with the same answers.
Walk = Callable[
    [Iterator[ChainLink], int, bytes, dict[int, list[Checkpoint]], "TreeCheck | None"],
    tuple[int, bytes, "_Failure | None"],
]
walk_here: Walk = _walk


def verify_links(
    links: Iterable[ChainLink],
    *,
    start: int = 1,
    end: int | None = None,
    anchor: bytes | None = None,
    checkpoints: Sequence[Checkpoint] = (),
    verifier: CheckpointVerifier | None = None,
    first_kept: int = 1,
    head_sequence: int | None = None,
    tree_from: merkle.Frontier | None = None,
    note_verifiers: Sequence[note.NoteVerifier] | None = None,
    witnessed: Sequence[tuple[str, note.TreeHead]] = (),
    walk: Walk = _walk,
) -> VerifyReport:
    """Verify links `start..end` (ascending) and the checkpoints that fall in or anchor that range.

    `anchor` is the hash record `start-1` had (the caller reads it from the store when start > first
    kept record); when `start == first_kept` the anchor must be genesis (first_kept == 1) or come from a
    validly signed PRUNE checkpoint. `head_sequence` is the last stored sequence: a checkpoint beyond it
    means records were removed from the end. Without a verifier, signatures are not checked.

    With `tree_from` (the tree of records 1..start-1) the Merkle tree is rebuilt along the way and every
    checkpoint's tree root, and every `witnessed` (who, tree head) held outside the database, is compared
    with it; `note_verifiers` also checks each checkpoint's signed note. `walk` walks the records (in
    this process by default; parallel_verify.ParallelWalk spreads it over processes)."""
    failures: list[_Failure] = []
    valid: list[Checkpoint] = []
    for cp in checkpoints:
        note_problem = _note_problem(cp, note_verifiers) if note_verifiers is not None else ""
        if (verifier is None or cp.signature_valid(verifier)) and not note_problem:
            valid.append(cp)
        elif note_problem:
            failures.append(_Failure(cp.sequence, Problem.CHECKPOINT_SIGNATURE, note_problem))
        else:
            failures.append(_Failure(
                cp.sequence, Problem.CHECKPOINT_SIGNATURE,
                f"checkpoint {cp.checkpoint_id} ({cp.kind.value}, sequence {cp.sequence}) has an invalid "
                f"signature for key {cp.key_id!r} version {cp.key_version}: forged or altered",
            ))  # fmt: skip
    checked_cps = len(checkpoints) if verifier is not None else 0
    if start == first_kept:
        if first_kept == 1:
            anchor = GENESIS_HASH
        else:
            anchors = [
                cp.pruned_through_hash for cp in valid
                if cp.kind is CheckpointKind.PRUNE and cp.pruned_through_sequence == first_kept - 1
            ]  # fmt: skip
            if not anchors:
                covered = max(
                    (cp.pruned_through_sequence for cp in valid if cp.kind is CheckpointKind.PRUNE), default=0
                )
                if covered < first_kept - 1:  # records were removed without a prune checkpoint for them
                    failures.append(_Failure(
                        covered + 1, Problem.GAP,
                        f"records {covered + 1}..{first_kept - 1} are missing; no signed prune checkpoint covers them",
                    ))  # fmt: skip
                else:
                    failures.append(_Failure(
                        first_kept, Problem.ANCHOR,
                        f"no validly signed prune checkpoint anchors record {first_kept}, the first one kept",
                    ))  # fmt: skip
                anchor = None
            else:
                anchor = anchors[-1]
    by_sequence: dict[int, list[Checkpoint]] = {}
    last = end if end is not None else float("inf")
    for cp in valid:
        if start <= cp.sequence <= last:
            by_sequence.setdefault(cp.sequence, []).append(cp)
    stream = iter(links)
    if anchor is None:  # already reported; take the first record's word for it and check the rest
        first = next(stream, None)
        anchor = first.prev_hash if first else b""
        stream = itertools.chain([first] if first else [], stream)
    tree = None
    if tree_from is not None:
        roots: dict[int, list[tuple[str, bytes]]] = {}
        for cp in valid:
            if cp.tree_root:
                roots.setdefault(cp.sequence, []).append((f"checkpoint {cp.checkpoint_id}", cp.tree_root))
        for who, head in witnessed:
            roots.setdefault(head.size, []).append((who, head.root))
        tree = TreeCheck(tree_from, roots)
    count, prev, failure = walk(stream, start, anchor, by_sequence, tree)
    if failure:
        failures.append(failure)
    if head_sequence is not None:
        last_checked = start + count - 1
        if failure is None and end is not None and last_checked < end <= head_sequence:
            failures.append(_Failure(last_checked + 1, Problem.GAP, f"records {last_checked + 1}..{end} are missing"))
        for who, head in witnessed:
            if head.size > head_sequence:
                failures.append(_Failure(
                    head_sequence + 1, Problem.TRUNCATED,
                    f"{who} states a tree of {head.size} records but the database holds {head_sequence}: "
                    f"records {head_sequence + 1}..{head.size} were removed (truncation or wipe)",
                ))  # fmt: skip
        beyond = [cp for cp in valid if cp.sequence > head_sequence]
        if beyond:
            top = max(cp.sequence for cp in beyond)
            failures.append(_Failure(
                head_sequence + 1, Problem.TRUNCATED,
                f"a signed checkpoint covers sequence {top} but the last stored record is {head_sequence}: "
                f"records {head_sequence + 1}..{top} were removed",
            ))  # fmt: skip
    head = ChainHead(start + count - 1, prev)
    if not failures:
        return VerifyReport(True, count, checked_cps, head=head)
    worst = min(failures, key=lambda f: f.sequence)
    return VerifyReport(False, count, checked_cps, worst.sequence, worst.problem, worst.detail, head)
