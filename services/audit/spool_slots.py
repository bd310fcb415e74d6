"""Spool slots no process holds — the process count was lowered after a crash, or a pod that shared
the spool volume is gone — drained by a live emitter, one at a time, under each slot's own lock."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from ztmesh.audit.errors import SpoolLocked

log = logging.getLogger(__name__)


class Slot(Protocol):
    """An opened spool slot (a `SpoolEmitter` that emits nothing itself), its lock held."""

    shipped: int

    def is_empty(self) -> bool: ...
    def pending(self) -> int: ...
    def flush(self, timeout: float = 30.0) -> bool: ...
    def close(self, flush_timeout: float = 5.0) -> None: ...


class SlotAdopter:
    """Every `interval` seconds, looks at the folders beside `own` that are spool slots and drains each
    one that nobody holds. `open_slot` raises SpoolLocked for a slot a live process holds."""

    def __init__(self, own: Path, open_slot: Callable[[Path], Slot], interval: float, on_adopt: Callable[[], None]):
        self.own = own
        self.open_slot = open_slot
        self.interval = interval
        self.on_adopt = on_adopt

    def run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.interval):
            for slot in sorted(self.own.parent.iterdir()):
                if stopping.is_set():
                    return
                if slot == self.own or not (slot / "spool.lock").exists():
                    continue
                try:
                    self._drain(slot, stopping)
                except Exception as exc:  # a broken sibling must not stop this one
                    log.error("audit spool: could not drain unclaimed slot %s (%s)", slot, exc)

    def _drain(self, path: Path, stopping: threading.Event) -> None:
        try:
            slot = self.open_slot(path)
        except SpoolLocked:
            return  # a live process owns it
        try:
            if slot.is_empty():
                return
            log.warning("audit spool: adopted unclaimed slot %s (%d events waiting); draining it", path, slot.pending())
            self.on_adopt()
            while not stopping.is_set() and not slot.flush(timeout=1.0):
                pass
            if slot.is_empty():
                log.warning("audit spool: unclaimed slot %s drained (%d shipped)", path, slot.shipped)
        finally:
            slot.close(flush_timeout=0)
