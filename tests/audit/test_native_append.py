"""An append's native encoding and hashing (native/audit/src/append.rs) against the Python they stand in
for: the same record parts and COPY columns (`record.record_parts`, `store_postgres._copy_columns`) on
random texts, every JSON and COPY escape included; and under the lock the same records, chain hashes,
tree nodes and frontier (`chain.extend_with_leaves` with `merkle.append_leaves`) from trees of every
shape (sizes around powers of two)."""

from __future__ import annotations

import dataclasses
import hashlib
import random
from types import ModuleType

import pytest

from tests.audit.factory import POLICY, events
from ztmesh.audit import canonical, chain, merkle
from ztmesh.audit.chain import ChainHead, extend_into_tree, extend_with_leaves
from ztmesh.audit.record import SCHEMA_VERSION, EventV1, record_parts
from ztmesh.audit.store_postgres import _copy_columns, _Encoded

SIZES = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 1023, 1024, 1025, 4097]


def _frontier(size: int) -> merkle.Frontier:
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(size)]
    return merkle.append_leaves(merkle.Frontier(), leaves)[0]


@pytest.mark.parametrize("size", SIZES)
def test_records_nodes_and_frontier_are_the_pythons(native: ModuleType, size: int) -> None:
    rng = random.Random(size)
    batch = events(rng.randrange(1, 40))
    head = ChainHead(size, rng.randbytes(32), "2026-12-01T10:00:00.000000Z" if size else "")
    encoded = {e.event_id: record_parts(e, POLICY) for e in batch}
    recorded_at = rng.choice(["2026-12-01T09:59:59.999999Z", "2026-12-01T10:00:01.000000Z"])  # back, forward
    frontier = _frontier(size)

    extension = extend_into_tree(head, batch, recorded_at, POLICY, encoded, frontier)

    expected_records, leaves = extend_with_leaves(head, batch, recorded_at, POLICY)
    expected_edge, expected_nodes = merkle.append_leaves(frontier, leaves)
    assert extension.records() == expected_records
    assert extension.hashes == [r.hash for r in expected_records]
    last = expected_records[-1]
    assert extension.last == ChainHead(last.sequence, last.hash, last.recorded_at)
    assert (extension.frontier, extension.nodes) == (expected_edge, expected_nodes)
    assert chain.native_append_records is not None  # the native step ran, not the fallback


def test_a_bad_hash_is_refused_not_guessed(native: ModuleType) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        native.append_records(b"short", 0, "t", [], [])
    with pytest.raises(ValueError, match="32 bytes"):
        native.append_records(bytes(32), 1, "t", [], [(0, b"x")])


ALPHABET = ["a", "Z", "0", " ", '"', "\\", "/", "\n", "\r", "\t", "\b", "\f", "\x00", "\x01", "\x1f", "\x7f",
            "ü", "€", "😀", "\u2028", "{", "}", ":", ","]  # fmt: skip


def _random_event(rng: random.Random) -> EventV1:
    """Any texts at all: the encoders must agree even on what validation would have refused."""
    text = lambda: "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 10)))  # noqa: E731
    return EventV1(
        event_id=text(), time=text(), service=text(), action=text(), outcome=text(), caller=text(),
        subject=text(), resource=text(), details=canonical.dumps({text(): text()}),
        masked=tuple(sorted({"/" + text() for _ in range(rng.randrange(0, 3))})), decision_id=text(), trace_id=text(),
    )  # fmt: skip


def test_encoded_records_and_copy_columns_are_the_pythons(native: ModuleType) -> None:
    rng = random.Random(3)
    batch = [_random_event(rng) for _ in range(3000)] + events(20)
    emitter = "spiffe://ztmesh.local/ns/ztmesh/sa/pol\ticy"
    encoded = native.encode_records(batch, emitter, str(SCHEMA_VERSION).encode())
    for event, (before, middle, after, columns) in zip(batch, encoded, strict=True):
        assert (before, middle, after) == record_parts(event, emitter), event
        assert columns == _copy_columns(event, emitter), event


def test_what_it_cannot_encode_is_left_to_python(native: ModuleType) -> None:
    good, odd = events(2)
    odd = dataclasses.replace(odd, subject="\ud800")  # a lone surrogate: not UTF-8
    bare = dataclasses.replace(good, masked=["/a"])  # type: ignore[arg-type]  # a list, not the tuple EventV1 holds
    assert native.encode_records([good, odd, bare], POLICY, b"1")[1:] == [None, None]
    with pytest.raises(UnicodeEncodeError):  # the store's encoding asks Python, which refuses it as before
        _Encoded([good, odd], POLICY)
