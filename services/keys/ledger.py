"""The shred ledger: one random secret per key version, kept outside the key database.

A version's private material is wrapped under KEK + its ledger secret. Destroying the version
erases the secret here (atomic rewrite, fsync) before its wrapped material is erased from the
database, so a database copy taken at any earlier time can no longer be unwrapped, even with the
KEK. The ledger is the crypto-shredding boundary: back it up with the database, keep the backups'
retention no longer than the erasure promise, and keep it on durable storage (a PVC in Kubernetes).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from ztmesh.keys.errors import KeyExists, KeysError

ID_ENTRY = "_ledger_id"


class ShredLedger:
    def __init__(self, path: Path) -> None:
        self.path = self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._secrets: dict[str, bytes] = {}
        self._stamp: tuple[int, int] | None = None
        self._reload()
        if ID_ENTRY not in self._secrets:
            with self._lock, self._file_lock():
                self._reload()
                self._secrets.setdefault(ID_ENTRY, os.urandom(16))
                self._persist()

    @property
    def ledger_id(self) -> str:
        """A random identity of this ledger, recorded in the key store to detect a missing ledger."""
        return self._secrets[ID_ENTRY].hex()

    def _reload(self) -> None:
        """Re-read the file when another server process (ZTMESH_PROCESSES > 1) has changed it."""
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return
        stamp = (st.st_ino, st.st_mtime_ns)
        if stamp == self._stamp:
            return
        try:
            raw = json.loads(self._path.read_text())
            self._secrets = {k: base64.b64decode(v) for k, v in raw.items()}
        except (ValueError, TypeError) as exc:
            raise KeysError(f"shred ledger {self._path} is corrupt: {exc}") from None
        self._stamp = stamp

    @staticmethod
    def entry(key_id: str, version: int) -> str:
        return f"{key_id}/{version}"

    def create(self, key_id: str, version: int, *, exclusive: bool = False) -> bytes:
        """A fresh secret for the version. `exclusive` refuses to replace an existing one: replacing the
        secret of a live version would make it unusable, so a new key never overwrites one."""
        secret = os.urandom(32)
        with self._lock, self._file_lock():
            self._reload()
            if exclusive and self.entry(key_id, version) in self._secrets:
                raise KeyExists(key_id)
            self._secrets[self.entry(key_id, version)] = secret
            self._persist()
        return secret

    def discard(self, key_id: str, version: int, secret: bytes) -> None:
        """Remove the version's secret if it is still `secret` (undo a `create` whose key was not stored)."""
        with self._lock, self._file_lock():
            self._reload()
            if self._secrets.get(self.entry(key_id, version)) == secret:
                del self._secrets[self.entry(key_id, version)]
                self._persist()

    def get(self, key_id: str, version: int) -> bytes | None:
        with self._lock:
            self._reload()  # one stat(): an erasure by another process is seen at once
            return self._secrets.get(self.entry(key_id, version))

    def erase(self, key_id: str, version: int) -> None:
        with self._lock, self._file_lock():
            self._reload()
            if self._secrets.pop(self.entry(key_id, version), None) is not None:
                self._persist()

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """Serialize read-modify-write of the file across server processes."""
        with open(self._path.with_name(self._path.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _persist(self) -> None:
        tmp = self._path.with_name(self._path.name + ".tmp")
        data = json.dumps({k: base64.b64encode(v).decode() for k, v in self._secrets.items()}, sort_keys=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._path)
        st = self._path.stat()
        self._stamp = (st.st_ino, st.st_mtime_ns)
        dir_fd = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
