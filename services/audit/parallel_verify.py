"""Full verification on every core: the sequence range is cut into stretches aligned to Merkle subtrees
of 2^k leaves, each worker walks its stretch from the stored hash before it and returns the roots of
its subtrees, and the roots are combined into the tree's root at every signed size. From PostgreSQL the
walk is native (ztmesh_audit_native, over the binary COPY stream) and the workers are threads; otherwise it
is `_walk_fast` in spawned processes.

The answer is the single-process walk's: when any stretch finds a problem, the walk is redone in this
process from the start of that stretch (on the chain and tree state the intact stretches before it
proved), so the report names the same record, problem and detail. Small ranges stay in one process.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from ztmesh.audit import merkle, note
from ztmesh.audit.chain import (
    ChainLink,
    Checkpoint,
    CheckpointVerifier,
    Failure,
    Problem,
    TreeCheck,
    VerifyReport,
    walk_here,
)
from ztmesh.audit.record import SCHEMA_VERSION
from ztmesh.audit.store import AuditStore
from ztmesh.audit.trail import verify_store

try:  # native/audit, built by scripts/install-deps.sh and the image; without it the walk is Python's
    from ztmesh_audit_native import BinaryWalk

    NATIVE = True
except ImportError:  # pragma: no cover - where the native walk is not built (CI's tests require it)
    NATIVE = False

CHUNK_BITS = 14  # stretches end on boundaries of subtrees of 16,384 leaves (records)
MIN_PARALLEL = 200_000  # below this, starting processes costs more than it saves
_SCHEMA_TEXT = str(SCHEMA_VERSION).encode()


def default_workers(cpu_max: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a pod's CPU
    limit): more processes than the quota only queue behind each other."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()
        return cores if quota == "max" else max(1, min(cores, int(quota) // int(period)))
    except (OSError, ValueError):
        return cores


def workers_for(address: str | None) -> int:
    """How many workers verify a store at `address` by default: one per core, or half as many when it is a
    PostgreSQL on this host, whose backend sends each worker its rows at about the CPU the worker spends
    on them (on a 2-core machine two workers verified at 0.77-1.22x the rate of one, 1.01x in the median)."""
    cores = default_workers()
    return max(1, cores // 2) if _postgres_on_this_host(address) else cores


def _postgres_on_this_host(address: str | None) -> bool:
    if address is None or ("://" not in address and "=" not in address):  # none, or an SQLite file
        return False
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(address)
    except ProgrammingError:
        return False
    hosts = str(params.get("hostaddr") or params.get("host") or "").split(",")
    return all(h in ("", "localhost", "127.0.0.1", "::1") or h.startswith("/") for h in hosts)  # "/": a socket


def store_address(store: AuditStore) -> str | None:
    """What another worker opens to read the same database (offline.open_for_reading), if anything."""
    dsn = getattr(store, "dsn", None)
    if isinstance(dsn, str):
        return dsn
    path = getattr(store, "path", None)
    return path if isinstance(path, str) and path != ":memory:" else None


@dataclass(frozen=True)
class _Share:
    """One worker's share of the walk: records first..last, the signed heads among them, and the tree
    sizes whose frontier it reports. `anchor` None: read the stored hash of record first-1; `seed` None:
    no tree to build."""

    first: int
    last: int
    anchor: bytes | None
    checkpoints: dict[int, list[Checkpoint]]
    seed: list[tuple[int, bytes]] | None
    sizes: list[int]
    bits: int


@dataclass
class _Stretch:
    """What one worker proved about records first..last (leaves first-1 .. last-1)."""

    first: int
    last: int
    count: int = 0
    last_hash: bytes = b""
    failure: Failure | None = None
    anchor: bytes = b""  # the stored hash of record first-1 the walk started from
    chunk_roots: list[bytes] = field(default_factory=list)  # every complete 2^k subtree, in order
    tails: dict[int, list[bytes]] = field(default_factory=dict)  # size -> frontier inside its subtree


def _walk_fast(
    links: Iterator[ChainLink],
    first: int,
    anchor: bytes,
    heads: dict[int, list[bytes]],
    seed: Sequence[tuple[int, bytes]] | None,
    sizes: Sequence[int],
    bits: int,
) -> tuple[int, bytes, bool, list[bytes], dict[int, list[bytes]]]:
    """Whether records first.. are intact (chain links, content hashes, signed head hashes) — no more:
    on the first doubt it stops and the caller redoes the stretch with `chain._walk`, which says what
    is wrong. Beside it, the roots of the complete 2^bits subtrees the leaves close and, for each size
    in `sizes`, the frontier inside its last incomplete subtree (`seed`: the frontier inside the first
    subtree before `first`; None: no tree). One loop, no calls per record but hashing: the hot path."""
    sha = hashlib.sha256
    build = seed is not None
    levels = [level for level, _ in seed or ()]
    hashes = [h for _, h in seed or ()]
    wanted = set(sizes)
    roots: list[bytes] = []
    tails: dict[int, list[bytes]] = {}
    expected, prev = first, anchor
    for link in links:
        body, digest = link.canonical, link.hash
        if link.sequence != expected or link.prev_hash != prev or sha(prev + body).digest() != digest:
            return expected - first, prev, False, roots, tails
        if expected in heads and any(h != digest for h in heads[expected]):
            return expected - first, prev, False, roots, tails
        if build:
            level, current = 0, sha(b"\x00" + body).digest()
            while levels and levels[-1] == level:
                levels.pop()
                current = sha(b"\x01" + hashes.pop() + current).digest()
                level += 1
            if level == bits:
                roots.append(current)
            else:
                levels.append(level)
                hashes.append(current)
                if expected in wanted:
                    tails[expected] = list(hashes)
        prev = digest
        expected += 1
    return expected - first, prev, True, roots, tails


def native_walk(store: AuditStore) -> bool:
    """Whether records of `store` are walked by the native walk: PostgreSQL (its binary COPY stream),
    with ztmesh_audit_native built."""
    return NATIVE and hasattr(store, "binary_records")


def _walk_native(
    store: AuditStore,
    first: int,
    last: int,
    anchor: bytes,
    heads: dict[int, list[bytes]],
    seed: Sequence[tuple[int, bytes]] | None,
    sizes: Sequence[int],
    bits: int,
) -> tuple[int, bytes, bool, list[bytes], dict[int, list[bytes]]]:
    """`_walk_fast`'s answer from ztmesh_audit_native over the binary COPY stream of records first..last:
    first as they lie on disk (in sequence order unless something moved them), and on the first doubt
    once more in sequence order from the record in doubt, so only a real problem reaches the Python walk."""
    walk = BinaryWalk(first, anchor, heads, None if seed is None else list(seed), list(sizes), bits, _SCHEMA_TEXT)
    for ordered in (False, True):
        chunks = store.binary_records(walk.next_sequence, last, ordered=ordered)  # type: ignore[attr-defined]
        try:
            for chunk in chunks:
                if not walk.feed(chunk):
                    break
        finally:
            chunks.close()  # stopped early: ends the database's stream
        count, last_hash, intact, roots, tails = walk.finish()
        if intact or ordered:
            break
        walk.restart()
    return count, last_hash, intact, roots, tails


def _walk_stretch(address: str, share: _Share) -> _Stretch:
    """Another worker's share (`_prove_stretch`), over its own connection to the database at `address`."""
    from ztmesh.audit.offline import open_for_reading

    store = open_for_reading(address)
    try:
        return _prove_stretch(store, share)
    finally:
        store.close()


def _prove_stretch(store: AuditStore, share: _Share) -> _Stretch:
    """One worker's share: walk records first..last (chain, signed head hashes) and build their subtrees."""
    first, last, seed, sizes, bits = share.first, share.last, share.seed, share.sizes, share.bits
    anchor = (store.hash_at(first - 1) or b"") if share.anchor is None else share.anchor
    heads = {s: [cp.head_hash for cp in cps] for s, cps in share.checkpoints.items()}
    if native_walk(store):
        count, last_hash, intact, roots, tails = _walk_native(store, first, last, anchor, heads, seed, sizes, bits)
    else:
        links = store.links(first, last)
        try:
            count, last_hash, intact, roots, tails = _walk_fast(links, first, anchor, heads, seed, sizes, bits)
        finally:
            close = getattr(links, "close", None)
            if close is not None:
                close()  # stopped early: ends the database's stream
    doubt = None if intact else Failure(first + count, Problem.NONE, "redo this stretch in one process")
    return _Stretch(first, last, count, last_hash, doubt, anchor, roots, tails)


class _Prefix:
    """The tree's right edge over whole 2^bits subtrees: the frontier of every size that is a multiple."""

    def __init__(self, frontier: merkle.Frontier, bits: int) -> None:
        self.bits = bits
        high = [(level - bits, h) for level, h in frontier.nodes if level >= bits]
        self.levels = [level for level, _ in high]
        self.hashes = [h for _, h in high]
        self.subtrees = frontier.size >> bits

    def append(self, root: bytes) -> None:
        level, current = 0, root
        while self.levels and self.levels[-1] == level:
            self.levels.pop()
            current = merkle.node_hash(self.hashes.pop(), current)
            level += 1
        self.levels.append(level)
        self.hashes.append(current)
        self.subtrees += 1

    def frontier(self) -> merkle.Frontier:
        nodes = tuple((level + self.bits, h) for level, h in zip(self.levels, self.hashes, strict=True))
        return merkle.Frontier(self.subtrees << self.bits, nodes)

    def root_with(self, tail: Sequence[bytes]) -> bytes:
        nodes = [*self.hashes, *tail]
        acc = nodes[-1]
        for h in reversed(nodes[:-1]):
            acc = merkle.node_hash(h, acc)
        return acc


class ParallelWalk:
    """A `chain.Walk` over records start..end of the database at `address`, in `workers` workers."""

    def __init__(
        self, store: AuditStore, address: str, end: int, workers: int, bits: int = CHUNK_BITS,
        min_parallel: int = MIN_PARALLEL,
    ) -> None:  # fmt: skip
        self.store, self.address, self.end, self.workers, self.bits = store, address, end, workers, bits
        self.min_parallel = min_parallel

    def _stretches(self, start: int) -> list[tuple[int, int]]:
        """About equal consecutive ranges first..last, one per worker, each ending on a 2^bits subtree
        boundary (record n is leaf n-1) but the last; only the first may start inside a subtree."""
        records = self.end - start + 1
        out, first = [], start
        for k in range(1, self.workers + 1):
            last = (
                self.end if k == self.workers else (start - 1 + records * k // self.workers) >> self.bits << self.bits
            )
            if last >= first:
                out.append((first, last))
                first = last + 1
        return out

    def __call__(
        self,
        links: Iterator[ChainLink],
        start: int,
        anchor: bytes,
        checkpoints: dict[int, list[Checkpoint]],
        tree: TreeCheck | None,
    ) -> tuple[int, bytes, Failure | None]:
        stretches = self._stretches(start) if self.workers > 1 and self.end - start + 1 >= self.min_parallel else []
        native = native_walk(self.store)
        if len(stretches) < 2:
            if not native or start > self.end:
                return walk_here(links, start, anchor, checkpoints, tree)
            stretches = [(start, self.end)]  # one worker, here: the native walk
        close = getattr(links, "close", None)
        if close is not None:
            close()  # the caller's single stream is not needed (it has not started unless anchoring failed)
        roots = tree.roots if tree is not None else {}
        seed = [(lv, h) for lv, h in tree.frontier.nodes if lv < self.bits] if tree is not None else None
        first, last = stretches[0]
        here = _Share(
            first, last, anchor, {s: c for s, c in checkpoints.items() if s <= last}, seed,
            sorted(s for s in roots if start <= s <= last), self.bits,
        )  # fmt: skip
        # This process's stretch reads through the caller's store; only the other workers open their own.
        if len(stretches) == 1:
            return self._combine([_prove_stretch(self.store, here)], start, anchor, checkpoints, tree)
        jobs: list[Future[_Stretch]] = []
        # The native walk hashes without the GIL, so threads share the work without starting processes
        # (a spawned one imports for ~0.3 s); the Python walk needs processes.
        pool: Executor = (
            ThreadPoolExecutor(len(stretches) - 1) if native
            else ProcessPoolExecutor(len(stretches) - 1, mp_context=get_context("spawn"))
        )  # fmt: skip
        with pool:
            for first, last in stretches[1:]:
                share = _Share(
                    first, last, None, {s: c for s, c in checkpoints.items() if first <= s <= last},
                    [] if seed is not None else None, sorted(s for s in roots if first <= s <= last), self.bits,
                )  # fmt: skip
                jobs.append(pool.submit(_walk_stretch, self.address, share))
            done = [_prove_stretch(self.store, here), *(job.result() for job in jobs)]
        return self._combine(done, start, anchor, checkpoints, tree)

    def _combine(
        self,
        done: list[_Stretch],
        start: int,
        anchor: bytes,
        checkpoints: dict[int, list[Checkpoint]],
        tree: TreeCheck | None,
    ) -> tuple[int, bytes, Failure | None]:
        prefix = _Prefix(tree.frontier, self.bits) if tree is not None else None
        count, prev = 0, anchor
        for stretch in done:
            intact = (
                stretch.failure is None and stretch.count == stretch.last - stretch.first + 1
                and stretch.anchor == prev
            )  # fmt: skip
            if not intact:
                return self._serially_from(stretch.first, count, prev, checkpoints, tree, prefix)
            if prefix is not None and tree is not None:
                for size in sorted(s for s in tree.roots if stretch.first <= s <= stretch.last):
                    chunk = (size - 1) >> self.bits
                    while prefix.subtrees < chunk:
                        prefix.append(stretch.chunk_roots[prefix.subtrees - ((stretch.first - 1) >> self.bits)])
                    tail = stretch.tails.get(size)
                    if tail is None:  # the size closes a subtree: the root is the prefix's own
                        prefix.append(stretch.chunk_roots[prefix.subtrees - ((stretch.first - 1) >> self.bits)])
                        computed = prefix.root_with([])
                    else:
                        computed = prefix.root_with(tail)
                    for who, root in tree.roots[size]:
                        if computed != root:
                            prev_hash = anchor if size == start else self.store.hash_at(size - 1) or b""
                            return size - start, prev_hash, Failure(
                                size, Problem.TREE_MISMATCH,
                                f"{who} states tree root {root.hex()[:16]}… for size {size}, but the records make "
                                f"{computed.hex()[:16]}…: the log up to record {size} was rewritten",
                            )  # fmt: skip
                first_subtree = (stretch.first - 1) >> self.bits
                while prefix.subtrees - first_subtree < len(stretch.chunk_roots):
                    prefix.append(stretch.chunk_roots[prefix.subtrees - first_subtree])
            count += stretch.count
            prev = stretch.last_hash
        return count, prev, None

    def _serially_from(
        self,
        first: int,
        count: int,
        prev: bytes,
        checkpoints: dict[int, list[Checkpoint]],
        tree: TreeCheck | None,
        prefix: _Prefix | None,
    ) -> tuple[int, bytes, Failure | None]:
        """The single-process walk from `first` on, from what the intact stretches before it proved."""
        rest = TreeCheck(prefix.frontier(), tree.roots) if tree is not None and prefix is not None else None
        if rest is not None and rest.frontier.size != first - 1:  # the first stretch: its own start state
            rest = tree
        more, last_hash, failure = walk_here(self.store.links(first, self.end), first, prev, checkpoints, rest)
        return count + more, last_hash, failure


def verify_store_parallel(
    store: AuditStore,
    verifier: CheckpointVerifier | None,
    from_sequence: int = 0,
    to_sequence: int = 0,
    *,
    note_verifiers: Sequence[note.NoteVerifier] | None = None,
    witnessed: Sequence[tuple[str, note.TreeHead]] = (),
    workers: int = 0,
    bits: int = CHUNK_BITS,
    min_parallel: int = MIN_PARALLEL,
) -> VerifyReport:
    """`trail.verify_store` with the walk spread over `workers` workers (0: `workers_for` the store). Stores
    another process cannot open (SQLite in memory) and small ranges are walked here."""
    address = store_address(store)
    count = workers or workers_for(address)
    walk_for = None
    if address is not None:
        walk_for = lambda end: ParallelWalk(store, address, end, count, bits, min_parallel)  # noqa: E731
    return verify_store(
        store, verifier, from_sequence, to_sequence, note_verifiers=note_verifiers, witnessed=witnessed,
        walk_for=walk_for,
    )  # fmt: skip
