"""Witnessing: each new checkpoint is published outside the audit database, and only when it extends
the last one published (a consistency proof checks out). Whoever later rewrites, truncates or wipes
the database cannot make it agree with what the witness already holds.

The witness is a directory: `latest` (the newest note) and one `<tree size>.note` per checkpoint,
written atomically. A directory works with whatever the platform offers to keep it apart from the
database and from the audit pod's own disk (a separate volume, NFS, an object-store mount, a synced
repository), and the verify CronJob mounts it read-only.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ztmesh.audit import merkle, note
from ztmesh.audit.errors import AuditError

log = logging.getLogger(__name__)
LATEST = "latest"


class WitnessRefused(AuditError):
    """A checkpoint does not extend the one the witness holds: the log forked or was rewritten."""


class DirectoryWitness:
    def __init__(self, directory: Path, verifiers: Callable[[], Sequence[note.NoteVerifier]]) -> None:
        self.directory = directory
        self._verifiers = verifiers  # asked each time: keys at the keys service are known once fetched

    def latest(self) -> tuple[str, note.TreeHead] | None:
        """The newest witnessed checkpoint (its note and what it states), None before the first."""
        path = self.directory / LATEST
        if not path.exists():
            return None
        text = path.read_text()
        opened = note.open_note(text, self._verifiers())
        return text, note.parse_tree_head(opened.text)

    def publish(self, signed: str, prove: Callable[[int, int], Sequence[bytes]]) -> bool:
        """Accept `signed` if its signatures verify and it extends the latest witnessed checkpoint (`prove`
        gives the consistency proof between two sizes). Returns False when it is already held."""
        head = note.parse_tree_head(note.open_note(signed, self._verifiers()).text)
        held = self.latest()
        if held is not None:
            _, old = held
            if old.origin != head.origin:
                raise WitnessRefused(f"checkpoint of log {head.origin!r} offered to the witness of {old.origin!r}")
            if head.size < old.size:
                raise WitnessRefused(
                    f"checkpoint of size {head.size} is older than the witnessed size {old.size}: the log shrank"
                )
            if head.size == old.size:
                if head.root != old.root:
                    raise WitnessRefused(f"two different trees of size {head.size}: the log forked")
                return False
            proof = prove(old.size, head.size)
            if not merkle.verify_consistency(old.size, head.size, old.root, head.root, proof):
                raise WitnessRefused(
                    f"the tree of size {head.size} does not extend the witnessed tree of size {old.size}: "
                    "records before it were rewritten"
                )
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.directory / f"{head.size}.note", signed)
        _write_atomically(self.directory / LATEST, signed)
        return True


def _write_atomically(path: Path, text: str) -> None:
    candidate = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    with open(candidate, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(candidate, path)
