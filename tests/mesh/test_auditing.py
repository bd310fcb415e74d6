"""Event and decision ids: RFC 9562 version 7, time-ordered, and distinct across forked server processes
(ZTMESH_PROCESSES forks workers; duplicate ids would make audit drop one event as a retry)."""

from __future__ import annotations

import multiprocessing
import time
import uuid

from ztmesh.mesh.auditing import uuid7


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
