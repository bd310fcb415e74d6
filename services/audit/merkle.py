"""The Merkle tree over the audit records (RFC 9162 §2.1): hashing, the stored subtree hashes that let
any proof be built from O(log n) reads, and inclusion and consistency proofs with their verification.

Storage model (the one Go's sumdb/tlog uses): every *complete* subtree is stored once, as a node
`(level, index)` covering leaves `[index·2^level, (index+1)·2^level)`. A tree of n leaves has < 2n of
them and they never change once written, so the table is append-only like the records. Any subtree the
RFC's proofs need — aligned, possibly incomplete on the right — is the right fold of at most log n
stored nodes, so a proof is one batched read of O(log² n) nodes at worst, O(log n) in practice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256() (RFC 9162 §2.1.1)

NodeId = tuple[int, int]  # (level, index)


class ProofError(ValueError):
    """A proof was asked for sizes or indexes that do not exist, or a needed node is missing."""


def leaf_hash(data: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


class NodeReader(Protocol):
    """Reads stored complete-subtree hashes; raises ProofError when one is not stored."""

    def read_nodes(self, ids: Sequence[NodeId]) -> list[bytes]: ...


class _ReadFunction:
    """A plain `ids -> hashes` function as a NodeReader."""

    def __init__(self, read: Callable[[Sequence[NodeId]], list[bytes]]) -> None:
        self.read_nodes = read


def nodes_in_order(ids: Sequence[NodeId], found: Mapping[NodeId, bytes]) -> list[bytes]:
    """The hashes of `ids` in order from a lookup of what a store returned; a gap is a ProofError
    (a store whose tree lost a node must say so, not prove something else)."""
    try:
        return [found[i] for i in ids]
    except KeyError as exc:
        raise ProofError(f"Merkle tree node {exc.args[0]} is not stored") from None


# --- appending ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Frontier:
    """The right edge of a tree: the roots of its complete subtrees, largest (leftmost) first.

    It is all an appender needs: a new leaf merges with the smallest subtrees of equal size."""

    size: int = 0
    nodes: tuple[tuple[int, bytes], ...] = ()  # (level, hash), level strictly decreasing

    def root(self) -> bytes:
        if not self.nodes:
            return EMPTY_ROOT
        acc = self.nodes[-1][1]
        for _, h in reversed(self.nodes[:-1]):
            acc = node_hash(h, acc)
        return acc


def frontier_ids(size: int) -> list[NodeId]:
    """The stored nodes that make up the frontier of a tree of `size` leaves."""
    return subtree_ids(0, size)


def frontier_from(size: int, reader: NodeReader | Callable[[Sequence[NodeId]], list[bytes]]) -> Frontier:
    if callable(reader):
        reader = _ReadFunction(reader)
    ids = frontier_ids(size)
    hashes = reader.read_nodes(ids) if ids else []
    return Frontier(size, tuple((level, h) for (level, _), h in zip(ids, hashes, strict=True)))


def append_leaves(frontier: Frontier, leaf_hashes: Iterable[bytes]) -> tuple[Frontier, list[tuple[NodeId, bytes]]]:
    """Add leaves after `frontier`; return the new frontier and every newly complete node to store."""
    nodes = list(frontier.nodes)
    size = frontier.size
    new: list[tuple[NodeId, bytes]] = []
    for h in leaf_hashes:
        level, current = 0, h
        new.append(((0, size), current))
        while nodes and nodes[-1][0] == level:
            _, left = nodes.pop()
            level += 1
            current = node_hash(left, current)
            new.append(((level, size >> level), current))
        nodes.append((level, current))
        size += 1
    return Frontier(size, tuple(nodes)), new


# --- subtrees of the RFC's recursion --------------------------------------------------------------------------


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 9162: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def subtree_ids(start: int, end: int) -> list[NodeId]:
    """The complete subtrees whose right fold is MTH(D[start:end]); start must be aligned to a power of
    two at least end - start (every range the RFC's recursion produces is)."""
    ids = []
    length = end - start
    for level in range(length.bit_length() - 1, -1, -1):
        if length >> level & 1:
            ids.append((level, start >> level))
            start += 1 << level
    return ids


def _fold(hashes: Sequence[bytes]) -> bytes:
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _inclusion_ranges(index: int, lo: int, hi: int) -> list[tuple[int, int]]:
    ranges = []
    while hi - lo > 1:  # PATH(m, D[lo:hi]), RFC 9162 §2.1.3.1, bottom-up order once reversed
        k = _largest_power_of_two_below(hi - lo)
        if index < lo + k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            lo = lo + k
    return ranges[::-1]


def _consistency_ranges(old: int, lo: int, hi: int) -> list[tuple[int, int]]:
    ranges = []
    complete = True  # SUBPROOF's b: the old tree is a complete subtree of what remains
    while old != hi - lo:  # SUBPROOF(m, D[lo:hi], b), RFC 9162 §2.1.4.1
        k = _largest_power_of_two_below(hi - lo)
        if old <= k:
            ranges.append((lo + k, hi))
            hi = lo + k
        else:
            ranges.append((lo, lo + k))
            old -= k
            lo = lo + k
            complete = False
    if not complete:
        ranges.append((lo, hi))
    return ranges[::-1]


def _hashes_of(ranges: Sequence[tuple[int, int]], reader: NodeReader) -> list[bytes]:
    """MTH of each range, from one batched read of the stored nodes they fold."""
    per_range = [subtree_ids(a, b) for a, b in ranges]
    wanted = sorted({i for ids in per_range for i in ids})
    found = dict(zip(wanted, reader.read_nodes(wanted), strict=True)) if wanted else {}
    return [_fold([found[i] for i in ids]) for ids in per_range]


def tree_root(size: int, reader: NodeReader) -> bytes:
    return EMPTY_ROOT if size == 0 else _hashes_of([(0, size)], reader)[0]


def inclusion_proof(index: int, size: int, reader: NodeReader) -> list[bytes]:
    """The audit path of leaf `index` in the tree of `size` leaves, leaf end first (RFC 9162 §2.1.3.1)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf {index} is not in a tree of {size} leaves")
    return _hashes_of(_inclusion_ranges(index, 0, size), reader)


def consistency_proof(old_size: int, new_size: int, reader: NodeReader) -> list[bytes]:
    """The proof that the tree of `new_size` leaves extends the one of `old_size` (RFC 9162 §2.1.4.1)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return []
    return _hashes_of(_consistency_ranges(old_size, 0, new_size), reader)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2, step by step) --------------------------------------------


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether `proof` shows the leaf hash `leaf` at `index` in the tree of `size` leaves with `root`."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Whether `proof` shows that the tree (`new_size`, `new_root`) extends (`old_size`, `old_root`)."""
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof  # every tree extends the empty one
    if not 0 < old_size < new_size or not proof:
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # an exact power of two: the old root is itself a node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == old_root and sr == new_root and sn == 0


class RunningTree:
    """The right edge of a tree being rebuilt leaf by leaf (a verifier recomputing the log): O(log n)
    memory, the root at any size on the way."""

    __slots__ = ("size", "_levels", "_hashes")

    def __init__(self, start: Frontier | None = None) -> None:
        start = start or Frontier()
        self.size = start.size
        self._levels = [level for level, _ in start.nodes]
        self._hashes = [h for _, h in start.nodes]

    def append(self, leaf: bytes) -> None:
        levels, hashes = self._levels, self._hashes
        level, current = 0, leaf
        while levels and levels[-1] == level:
            levels.pop()
            current = node_hash(hashes.pop(), current)
            level += 1
        levels.append(level)
        hashes.append(current)
        self.size += 1

    def root(self) -> bytes:
        return _fold(self._hashes) if self._hashes else EMPTY_ROOT


class MemoryNodes:
    """A node table in a dict: for tests, the offline verifier and rebuilding a tree from records."""

    def __init__(self) -> None:
        self.nodes: dict[NodeId, bytes] = {}
        self.frontier = Frontier()

    def append(self, leaf_hashes: Iterable[bytes]) -> None:
        self.frontier, new = append_leaves(self.frontier, leaf_hashes)
        self.nodes.update(new)

    def read_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        return nodes_in_order(ids, self.nodes)
