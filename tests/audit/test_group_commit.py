"""Group commit on a real database (SQLite and PostgreSQL): appends that arrive while one is written
share the next transaction, keep the chain and the tree whole, and one caller's refusal stays its own."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from tests.audit.factory import POLICY, Backend, event, events
from tests.support.processes import wait_until
from ztmesh.audit import merkle
from ztmesh.audit.errors import InvalidEvent
from ztmesh.audit.record import EventV1
from ztmesh.audit.signing import LocalMlDsaSigner
from ztmesh.audit.store import AppendResult, AuditStore
from ztmesh.audit.trail import AuditTrail, TrailSettings


class HeldStore:
    """The real store, counting its group writes; once armed, it holds the next write until released,
    so appends arriving meanwhile queue behind it (the situation group commit exists for)."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        self.groups: list[int] = []  # appends per transaction, in order
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def append_many(self, batches: Sequence[tuple[Sequence[EventV1], str]]) -> list[list[AppendResult]]:
        self.groups.append(len(batches))
        if self.armed:
            self.armed = False
            self.entered.set()
            assert self.release.wait(30)
        return self.store.append_many(batches)

    def append(self, events: Sequence[EventV1], emitter: str) -> list[AppendResult]:
        return self.append_many([(events, emitter)])[0]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def run_concurrently(trail: AuditTrail, held: HeldStore, first: list[EventV1], rest: list[list[EventV1]]) -> dict:
    """`first` is written (and held) while each of `rest` is appended from its own thread, queueing in
    order; returns each caller's results or the error it raised, by position (0 = first)."""
    outcome: dict[int, Any] = {}

    def append(i: int, batch: list[EventV1]) -> None:
        try:
            outcome[i] = trail.append(batch, POLICY)
        except Exception as exc:
            outcome[i] = exc

    held.armed = True
    threads = [threading.Thread(target=append, args=(0, first))]
    threads[0].start()
    assert held.entered.wait(30)
    for i, batch in enumerate(rest, start=1):  # one at a time, so they queue in this order
        threads.append(threading.Thread(target=append, args=(i, batch)))
        threads[-1].start()
        wait_until(lambda: len(trail._commits._queue) == len(threads), 30, f"append {i} queued")
    held.release.set()
    for t in threads:
        t.join(30)
    return outcome


def test_appends_arriving_during_a_write_share_the_next_transaction(
    backend: Backend, signer: LocalMlDsaSigner
) -> None:
    held = HeldStore(backend.store())
    trail = AuditTrail(held, signer, signer, TrailSettings(checkpoint_every=1000))  # type: ignore[arg-type]
    outcome = run_concurrently(trail, held, events(3), [events(2, start=10 * i) for i in range(1, 6)])
    assert held.groups == [1, 5]  # the held write, then everyone who queued behind it in one
    sequences = sorted(r.sequence for results in outcome.values() for r in results)
    assert sequences == list(range(1, 14)) and not any(r.duplicate for rs in outcome.values() for r in rs)
    assert trail.verify().ok
    reference = merkle.MemoryNodes()
    reference.append(merkle.leaf_hash(link.canonical) for link in held.store.links(1, 13))
    assert merkle.tree_root(13, held.store) == reference.frontier.root()


def test_a_refused_append_in_a_group_fails_only_its_own_caller(backend: Backend, signer: LocalMlDsaSigner) -> None:
    held = HeldStore(backend.store())
    trail = AuditTrail(held, signer, signer, TrailSettings(checkpoint_every=1000))  # type: ignore[arg-type]
    stored = event(1)
    trail.append([stored], POLICY)
    rewritten = dataclasses.replace(stored, outcome="ALLOW" if stored.outcome == "DENY" else "DENY")
    outcome = run_concurrently(trail, held, events(2, start=10), [[rewritten], events(3, start=20)])
    assert isinstance(outcome[1], InvalidEvent) and "different contents" in str(outcome[1])
    assert [r.sequence for r in outcome[0]] == [2, 3]
    assert [r.sequence for r in outcome[2]] == [4, 5, 6]  # written alone after the group was refused
    assert held.groups == [1, 1, 2, 1, 1]
    assert trail.verify().ok and held.store.head().sequence == 6


def test_a_retry_racing_its_original_in_one_group_is_stored_once(backend: Backend, signer: LocalMlDsaSigner) -> None:
    held = HeldStore(backend.store())
    trail = AuditTrail(held, signer, signer, TrailSettings(checkpoint_every=1000))  # type: ignore[arg-type]
    batch = events(4)
    outcome = run_concurrently(trail, held, events(1, start=50), [batch, batch])
    assert [r.sequence for r in outcome[1]] == [2, 3, 4, 5] and not any(r.duplicate for r in outcome[1])
    assert [(r.sequence, r.duplicate) for r in outcome[2]] == [(s, True) for s in (2, 3, 4, 5)]
    assert held.groups == [1, 2] and held.store.head().sequence == 5


@pytest.mark.parametrize("limit", [4])
def test_a_group_stops_at_its_event_limit(backend: Backend, signer: LocalMlDsaSigner, limit: int) -> None:
    held = HeldStore(backend.store())
    trail = AuditTrail(held, signer, signer, TrailSettings(checkpoint_every=1000))  # type: ignore[arg-type]
    trail._commits.max_events = limit
    run_concurrently(trail, held, events(1), [events(3, start=10), events(3, start=20), events(1, start=30)])
    assert held.groups == [1, 1, 2]  # 3 fit; 3 + 3 do not; the last 3 + 1 do
    assert trail.verify().ok


def test_appends_on_the_event_loop_share_a_transaction_and_a_thread_hand_off(
    backend: Backend, signer: LocalMlDsaSigner
) -> None:
    """The audit service's Append runs on the loop: callers queued while a group is written (in a worker
    thread) are written together next, and each gets its own results or its own refusal."""
    held = HeldStore(backend.store())
    trail = AuditTrail(held, signer, signer, TrailSettings(checkpoint_every=1000))  # type: ignore[arg-type]
    stored = event(1)
    trail.append([stored], POLICY)
    rewritten = dataclasses.replace(stored, outcome="ALLOW" if stored.outcome == "DENY" else "DENY")

    async def run() -> list:
        held.armed = True
        first = asyncio.ensure_future(trail.append_async(events(2, start=10), POLICY))
        while not held.entered.is_set():
            await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(trail.append_async(batch, POLICY))
                for batch in (events(3, start=20), [rewritten], events(1, start=30))]  # fmt: skip
        while len(trail._commits._loop_queue) < 3:  # queued behind the held write
            await asyncio.sleep(0.01)
        held.release.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    outcome = asyncio.run(run())
    assert [r.sequence for r in outcome[0]] == [2, 3]
    assert [r.sequence for r in outcome[1]] == [4, 5, 6] and [r.sequence for r in outcome[3]] == [7]
    assert isinstance(outcome[2], InvalidEvent)
    assert held.groups == [1, 1, 3, 1, 1, 1]  # the held write; the three together (refused); each alone
    assert trail.verify().ok and held.store.head().sequence == 7
