"""The spool's group commit for callers on the serving loop (`SpoolEmitter.emit_async`).

Events queue on the loop and one task at a time commits everything queued so far, sending it over an
asyncio channel to audit within the same per-attempt deadline as the blocking path, with no thread
hand-off while audit answers. The emitter decides as for its blocking leader (`direct_plan`); only a
group that has to be spooled (an fsync) goes to a thread, under the same lock as the blocking leader's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ztmesh.audit.record import EventV1

if TYPE_CHECKING:
    from ztmesh.audit.spool import SpoolEmitter, _Pending


class AsyncAuditSink(Protocol):
    """An audit sink that can send from the serving loop, each error meaning what it does for
    `ztmesh.audit.spool.AuditSink.append`."""

    async def append_async(self, events: Sequence[EventV1], timeout: float | None = None) -> Sequence[Any]: ...


class LoopGroupCommit:
    def __init__(self, emitter: SpoolEmitter, sink: AsyncAuditSink) -> None:
        self._emitter = emitter
        self._sink = sink
        self._queue: list[tuple[_Pending, asyncio.Future[None]]] = []
        self._committing = False  # a commit task runs

    async def emit(self, pending: _Pending) -> None:
        """Return once `pending`'s event is durable; raise why it cannot be."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queue.append((pending, done))
        if not self._committing:
            self._committing = True
            loop.create_task(self._lead())
        await done

    async def _lead(self) -> None:
        """Commit what queued, group after group, until nothing waits."""
        try:
            while self._queue:
                group, self._queue = self._queue, []
                batch = [p for p, _ in group]
                try:
                    await self._commit(batch)
                except BaseException as exc:  # each waiter learns why its operation must fail
                    for p in batch:
                        if p.error is None:
                            p.error = exc
                for p, done in group:
                    if done.done():  # its caller was cancelled: nothing to tell
                        continue
                    if p.error is not None:
                        done.set_exception(p.error)
                    else:
                        done.set_result(None)
        finally:
            self._committing = False

    async def _commit(self, batch: list[_Pending]) -> None:
        emitter = self._emitter
        if emitter.goes_direct():
            plan = emitter.direct_plan(batch)
            try:
                chunk = next(plan)
                while True:
                    failure: Exception | None = None
                    try:
                        await self._sink.append_async([p.event for p in chunk], timeout=emitter.settings.direct_timeout)
                    except Exception as exc:
                        failure = exc
                    chunk = plan.send(failure)
            except StopIteration as finished:
                batch = finished.value
            if not batch:
                return
        # Audit is away (or a backlog is spooled, to keep in order behind): write and fsync in a thread.
        await asyncio.to_thread(emitter.spool, batch)
