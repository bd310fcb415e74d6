"""The event loop the mesh servers of a process serve on, run in a thread of its own so that a
synchronous caller (an entry point, a test, a CLI) can start and stop servers without running one.

One loop per process: every server, and every asyncio client they hold (the audit emitter's channel),
lives on it, so nothing hands a call from one loop to another.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _run(loop: asyncio.AbstractEventLoop, started: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    loop.run_forever()


def mesh_loop() -> asyncio.AbstractEventLoop:
    """The process's serving loop, started on first use."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            started = threading.Event()
            threading.Thread(target=_run, args=(loop, started), name="ztmesh-loop", daemon=True).start()
            started.wait()
            _loop = loop
        return _loop


def on_mesh_loop() -> bool:
    """Whether the caller runs on the serving loop (where blocking would stall every call)."""
    try:
        return asyncio.get_running_loop() is _loop
    except RuntimeError:
        return False


def run_on_loop(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coro` on the serving loop from another thread and return its result."""
    return asyncio.run_coroutine_threadsafe(coro, mesh_loop()).result(timeout)
